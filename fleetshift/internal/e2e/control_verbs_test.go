package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"

	"github.com/fleetshift/fleetshift/fleetshift/internal/server"
)

var allStatuses = []string{"pending", "scheduled", "in_progress", "paused", "awaiting_approval", "completed",
	"failed", "cancelled", "rolled_back", "superseded"}

// fixture writes a rollout of acme/app 1.0 -> 2.0 in status with two devices: d1 in batch 1 (moved to
// 2.0 and completed, unless the rollout never started: then pending on 1.0) and d2 in batch 2 (pending).
func (e *env) fixture(status string) (id, d1, d2 string) {
	e.t.Helper()
	ctx := context.Background()
	id = uuid.NewString()
	short := strings.ReplaceAll(id[:8], "-", "")
	d1, d2 = "c1-"+short, "c2-"+short
	started := status != "pending" && status != "scheduled"
	batch, d1Status, d1Image := 0, "pending", "acme/app:1.0"
	if started {
		batch, d1Status, d1Image = 1, "completed", "acme/app:2.0"
	}
	apps := func(image string) string {
		b, _ := json.Marshal(appsFor(image))
		return string(b)
	}
	for _, d := range []struct{ uuid, image string }{{d1, d1Image}, {d2, "acme/app:1.0"}} {
		if _, err := e.db.Pool.Exec(ctx, `INSERT INTO devices (uuid, device_name, fleet_id, api_key_hash)
			VALUES ($1::text, $1::text, 'ctl', sha256(convert_to($1::text, 'UTF8')))`, d.uuid); err != nil {
			e.t.Fatal(err)
		}
		if _, err := e.db.Pool.Exec(ctx, `INSERT INTO device_target_state (device_uuid, apps, etag)
			VALUES ($1, $2::jsonb, 'e')`, d.uuid, apps(d.image)); err != nil {
			e.t.Fatal(err)
		}
	}
	if _, err := e.db.Pool.Exec(ctx, `INSERT INTO image_rollouts (rollout_id, image_name, repository, old_tag, new_tag,
			new_image, strategy, status, current_batch, completed_batch, requested_batch, total_batches, batch_sizes,
			total_devices, updated_devices, healthy_devices, policy)
		VALUES ($1, 'acme/app', 'docker.io/acme/app', '1.0', '2.0', 'acme/app:2.0', 'staged', $2, $3, $3, $3, 2, '{1,1}',
			2, $3, $3, '{"batch_delay_seconds": 0}')`, id, status, batch); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.db.Pool.Exec(ctx, `INSERT INTO device_rollout_status (rollout_id, device_uuid, batch_number, status,
			old_image_tag, new_image_tag, old_image, new_image)
		VALUES ($1, $2, 1, $3, '1.0', '2.0', 'acme/app:1.0', 'acme/app:2.0'),
		       ($1, $4, 2, 'pending', '1.0', '2.0', 'acme/app:1.0', 'acme/app:2.0')`, id, d1, d1Status, d2); err != nil {
		e.t.Fatal(err)
	}
	return id, d1, d2
}

// effect is what a verb did to a fixture, comparable between fixtures.
type effect struct {
	Status         string
	AutoPaused     bool
	RequestedBatch int
	TimerSet       bool
	Devices        []string // d1 status, d1 image, d2 status, d2 image
	Events         []string // type by actor, in order
}

func (e *env) effectOf(id, d1, d2 string) effect {
	e.t.Helper()
	ctx := context.Background()
	var f effect
	if err := e.db.Pool.QueryRow(ctx, `SELECT status, auto_paused, requested_batch, next_batch_at IS NOT NULL
		FROM image_rollouts WHERE rollout_id = $1`, id).Scan(&f.Status, &f.AutoPaused, &f.RequestedBatch, &f.TimerSet); err != nil {
		e.t.Fatal(err)
	}
	for _, d := range []string{d1, d2} {
		var status, image string
		if err := e.db.Pool.QueryRow(ctx, `SELECT s.status, t.apps->'1'->'services'->0->>'imageName'
			FROM device_rollout_status s JOIN device_target_state t USING (device_uuid)
			WHERE s.rollout_id = $1 AND s.device_uuid = $2`, id, d).Scan(&status, &image); err != nil {
			e.t.Fatal(err)
		}
		f.Devices = append(f.Devices, status, image)
	}
	rows, err := e.db.Pool.Query(ctx, `SELECT event_type || ' by ' || coalesce(actor, '-') FROM rollout_events
		WHERE rollout_id = $1 ORDER BY id`, id)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			e.t.Fatal(err)
		}
		f.Events = append(f.Events, s)
	}
	return f
}

// reply is a control answer over either transport.
type reply struct {
	Code    int // HTTP status; over NATS 200 for ok, else the status of the error code
	Status  string
	Changed bool
	Error   string
	Message string
}

func (e *env) httpVerb(token, verb, id, device string) reply {
	e.t.Helper()
	path := "/api/v1/rollouts/" + id + "/" + verb
	if verb == "rollback" {
		path = "/api/v1/rollouts/" + id + "/devices/" + device + "/rollback"
	}
	r := e.call("POST", path, nil, map[string]string{"Authorization": "Bearer " + token})
	return decodeReply(e.t, r.status, r.body)
}

func natsVerb(t *testing.T, nc *nats.Conn, prefix, token, verb, id, device string) reply {
	t.Helper()
	m := nats.NewMsg(prefix + ".control.rollout." + id + "." + verb)
	m.Header.Set("Authorization", token) // the bare token form
	if verb == "rollback" {
		m.Data, _ = json.Marshal(map[string]string{"device_uuid": device})
	}
	res, err := nc.RequestMsg(m, 10*time.Second)
	if err != nil {
		t.Fatalf("NATS %s %s: %v", verb, id, err)
	}
	return decodeReply(t, 0, res.Data)
}

// errorStatus maps the error codes control answers with to their HTTP status.
var errorStatus = map[string]int{"invalid_state": 409, "rollout_superseded": 409, "rollout_not_found": 404,
	"device_not_in_rollout": 404, "invalid_id": 400, "invalid_device_uuid": 400, "unauthorized": 401,
	"insufficient_scope": 403, "invalid_verb": 400}

func decodeReply(t *testing.T, status int, body []byte) reply {
	t.Helper()
	var doc struct {
		OK      bool            `json:"ok"`
		Status  string          `json:"status"`
		Changed bool            `json:"changed"`
		Rollout json.RawMessage `json:"rollout"`
		Error   *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("decode control reply %s: %v", body, err)
	}
	r := reply{Code: status, Status: doc.Status, Changed: doc.Changed}
	if doc.Error != nil {
		r.Error, r.Message = doc.Error.Code, doc.Error.Message
		if status == 0 {
			r.Code = errorStatus[doc.Error.Code]
		}
		return r
	}
	if !doc.OK {
		t.Fatalf("control reply neither ok nor error: %s", body)
	}
	var ro struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(doc.Rollout, &ro); err != nil || ro.Status != doc.Status {
		t.Fatalf("control reply's rollout does not carry its status %q: %s", doc.Status, body)
	}
	if status == 0 {
		r.Code = 200
	}
	return r
}

// operatorToken creates a token of scope and returns its id and secret.
func (e *env) operatorToken(name, scope string) (string, string) {
	e.t.Helper()
	var tok struct {
		ID    string `json:"id"`
		Token string `json:"token"`
	}
	e.admin("POST", "/api/v1/tokens", map[string]any{"name": name, "scope": scope}, 201).json(e.t, &tok)
	return tok.ID, tok.Token
}

// expect is the answer of verb on a rollout in status: the HTTP status and the status after.
func expect(verb, status string) (int, string) {
	active := map[string]bool{"pending": true, "scheduled": true, "in_progress": true, "paused": true, "awaiting_approval": true}
	switch verb {
	case "start":
		switch status {
		case "pending":
			return 200, "in_progress"
		case "in_progress", "awaiting_approval":
			return 200, status
		}
	case "pause":
		switch status {
		case "in_progress", "awaiting_approval", "scheduled", "paused":
			return 200, "paused"
		}
	case "resume":
		switch status {
		case "paused", "in_progress":
			return 200, "in_progress"
		}
	case "cancel":
		if active[status] || status == "cancelled" {
			return 200, "cancelled"
		}
	case "approve":
		switch status {
		case "awaiting_approval", "in_progress":
			return 200, "in_progress"
		}
	case "rollback-all":
		if status != "superseded" {
			return 200, "rolled_back"
		}
	case "rollback":
		if status != "superseded" {
			return 200, status
		}
	}
	return 409, status
}

// TestEveryVerbOnEveryStatusOverHTTPAndNATS: each verb against a rollout in each status gives the same
// answer (200 or a 409 saying why) and the same effect over HTTP and over NATS, as the table says; a
// verb that does not apply changes nothing; every event a verb records names the acting token.
func TestEveryVerbOnEveryStatusOverHTTPAndNATS(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// Only the API role: no dispatcher or healthwatch acts on the fixtures behind the verbs' backs.
	e.start(server.RoleStateAPI)
	_, op := e.operatorToken("ops-bot", "operate")
	nc, err := nats.Connect(e.srv.NATSURL, nats.Token(op))
	if err != nil {
		t.Fatalf("operator NATS connection: %v", err)
	}
	defer nc.Close()
	prefix := e.srv.Subjects.Prefix

	verbs := []string{"start", "pause", "resume", "cancel", "approve", "rollback-all", "rollback"}
	for _, verb := range verbs {
		for _, status := range allStatuses {
			name := verb + "/" + status
			wantCode, wantStatus := expect(verb, status)

			hID, hD1, hD2 := e.fixture(status)
			before := e.effectOf(hID, hD1, hD2)
			h := e.httpVerb(op, verb, hID, hD1)
			hEff := e.effectOf(hID, hD1, hD2)

			nID, nD1, nD2 := e.fixture(status)
			n := natsVerb(t, nc, prefix, op, verb, nID, nD1)
			nEff := e.effectOf(nID, nD1, nD2)

			if h.Code != wantCode || n.Code != wantCode {
				t.Errorf("%s: HTTP %d (%s), NATS %d (%s); want %d", name, h.Code, h.Message, n.Code, n.Message, wantCode)
				continue
			}
			if h.Error != n.Error || strings.ReplaceAll(h.Message, hID, "ID") != strings.ReplaceAll(n.Message, nID, "ID") ||
				h.Status != n.Status || h.Changed != n.Changed {
				t.Errorf("%s: HTTP and NATS answers differ:\nHTTP %+v\nNATS %+v", name, h, n)
			}
			if !reflect.DeepEqual(hEff, nEff) {
				t.Errorf("%s: HTTP and NATS effects differ:\nHTTP %+v\nNATS %+v", name, hEff, nEff)
			}
			if hEff.Status != wantStatus {
				t.Errorf("%s: rollout is %s after the verb, want %s", name, hEff.Status, wantStatus)
			}
			if wantCode == 409 {
				if !strings.Contains(h.Message, "cannot") || h.Error != "invalid_state" {
					t.Errorf("%s: 409 does not say why: %+v", name, h)
				}
				if !reflect.DeepEqual(before, hEff) {
					t.Errorf("%s: a refused verb changed things:\nbefore %+v\nafter  %+v", name, before, hEff)
				}
				continue
			}
			if wantCode == 200 && h.Status != wantStatus {
				t.Errorf("%s: answer says status %s, want %s", name, h.Status, wantStatus)
			}
			newEvents := hEff.Events[len(before.Events):]
			// (Rolling back a device never dispatched only marks it skipped: no event.)
			if len(newEvents) > 0 && !h.Changed || h.Changed && len(newEvents) == 0 && verb != "rollback" {
				t.Errorf("%s: changed=%v but new events %v", name, h.Changed, newEvents)
			}
			for _, ev := range newEvents {
				if !strings.HasSuffix(ev, " by token:ops-bot") {
					t.Errorf("%s: event %q does not name the acting token", name, ev)
				}
			}
			// A repeat of a verb that took effect is a harmless 200 that changes nothing.
			again := e.httpVerb(op, verb, hID, hD1)
			if after := e.effectOf(hID, hD1, hD2); again.Code != 200 || again.Changed || !reflect.DeepEqual(after, hEff) {
				t.Errorf("%s: repeating the verb: %+v, effect %+v -> %+v", name, again, hEff, after)
			}
		}
	}

	// Specific effects.
	id, d1, d2 := e.fixture("in_progress")
	e.httpVerb(op, "cancel", id, "")
	if f := e.effectOf(id, d1, d2); f.Devices[0] != "completed" || f.Devices[1] != "acme/app:2.0" || f.Devices[2] != "skipped" {
		t.Errorf("cancel: moved devices stay, pending devices are skipped: %+v", f)
	}
	id, d1, d2 = e.fixture("completed")
	e.httpVerb(op, "rollback-all", id, "")
	if f := e.effectOf(id, d1, d2); f.Devices[0] != "rolled_back" || f.Devices[1] != "acme/app:1.0" || f.Devices[3] != "acme/app:1.0" {
		t.Errorf("rollback-all: moved devices go back to their old image: %+v", f)
	}
	id, d1, d2 = e.fixture("pending")
	e.httpVerb(op, "start", id, "")
	if f := e.effectOf(id, d1, d2); f.RequestedBatch != 1 {
		t.Errorf("start requests batch 1: %+v", f)
	}
	id, d1, d2 = e.fixture("awaiting_approval")
	e.httpVerb(op, "approve", id, "")
	if f := e.effectOf(id, d1, d2); f.RequestedBatch != 2 {
		t.Errorf("approve requests the next batch: %+v", f)
	}
	id, d1, _ = e.fixture("in_progress")
	m := nats.NewMsg(prefix + ".control.rollout." + id + ".devices." + d1 + ".rollback")
	m.Header.Set("Authorization", "Bearer "+op)
	res, err := nc.RequestMsg(m, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r := decodeReply(t, 0, res.Data); r.Code != 200 || !r.Changed {
		t.Errorf("device rollback with the device in the subject: %+v", r)
	}

	// Unknown rollout 404, malformed id 400, over both.
	for _, c := range []struct {
		id   string
		code int
	}{{uuid.NewString(), 404}, {"not-a-uuid", 400}} {
		if h := e.httpVerb(op, "pause", c.id, ""); h.Code != c.code {
			t.Errorf("HTTP pause %s: %+v, want %d", c.id, h, c.code)
		}
		if n := natsVerb(t, nc, prefix, op, "pause", c.id, ""); n.Code != c.code {
			t.Errorf("NATS pause %s: %+v, want %d", c.id, n, c.code)
		}
	}
	if n := natsVerb(t, nc, prefix, op, "explode", uuid.NewString(), ""); n.Code != 400 {
		t.Errorf("NATS unknown verb: %+v", n)
	}
	if h := e.httpVerb(op, "rollback", id, "no-such-device"); h.Code != 404 {
		t.Errorf("rollback of a device not in the rollout: %+v", h)
	}
}

// TestControlNeedsAnOperateToken: a read token cannot operate (HTTP 403, NATS error), an operate token
// can, a revoked token opens nothing, over HTTP and NATS alike.
func TestControlNeedsAnOperateToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(server.RoleStateAPI)
	_, read := e.operatorToken("reader", "read")
	opID, op := e.operatorToken("operator", "operate")
	prefix := e.srv.Subjects.Prefix
	id, _, _ := e.fixture("in_progress")

	// Read: refused by the route, by the responder (asked over the service connection, which may
	// publish anywhere), and the read token's own NATS connection may not even publish a control request.
	if h := e.httpVerb(read, "pause", id, ""); h.Code != http.StatusForbidden || h.Error != "insufficient_scope" {
		t.Errorf("HTTP pause with a read token: %+v", h)
	}
	if n := natsVerb(t, e.srv.NC, prefix, read, "pause", id, ""); n.Code != http.StatusForbidden || n.Error != "insufficient_scope" {
		t.Errorf("NATS pause with a read token: %+v", n)
	}
	readNC, err := nats.Connect(e.srv.NATSURL, nats.Token(read))
	if err != nil {
		t.Fatalf("read token NATS connection: %v", err)
	}
	defer readNC.Close()
	m := nats.NewMsg(prefix + ".control.rollout." + id + ".pause")
	m.Header.Set("Authorization", read)
	if _, err := readNC.RequestMsg(m, 2*time.Second); err == nil {
		t.Error("a read token's connection got an answer to a control request")
	}
	if h := e.httpVerb("", "pause", id, ""); h.Code != http.StatusUnauthorized {
		t.Errorf("HTTP pause without a token: %+v", h)
	}
	if n := natsVerb(t, e.srv.NC, prefix, "", "pause", id, ""); n.Code != http.StatusUnauthorized {
		t.Errorf("NATS pause without a token: %+v", n)
	}
	if st := e.rollout(id).Status; st != "in_progress" {
		t.Fatalf("refused requests changed the rollout: %s", st)
	}

	// Operate works over both.
	if h := e.httpVerb(op, "pause", id, ""); h.Code != 200 || h.Status != "paused" {
		t.Errorf("HTTP pause with an operate token: %+v", h)
	}
	if n := natsVerb(t, e.srv.NC, prefix, "Bearer "+op, "resume", id, ""); n.Code != 200 || n.Status != "in_progress" {
		t.Errorf("NATS resume with an operate token: %+v", n)
	}
	var actors []string
	rows, err := e.db.Pool.Query(context.Background(), `SELECT event_type || '/' || actor FROM rollout_events
		WHERE rollout_id = $1 ORDER BY id`, id)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		actors = append(actors, s)
	}
	rows.Close()
	if got := strings.Join(actors, ","); got != "image.rollout_paused/token:operator,image.rollout_resumed/token:operator" {
		t.Errorf("control events and their actors: %s", got)
	}

	// Revoked: nothing opens.
	e.admin("DELETE", "/api/v1/tokens/"+opID, nil, 204)
	if h := e.httpVerb(op, "pause", id, ""); h.Code != http.StatusUnauthorized {
		t.Errorf("HTTP pause with a revoked token: %+v", h)
	}
	if n := natsVerb(t, e.srv.NC, prefix, op, "pause", id, ""); n.Code != http.StatusUnauthorized {
		t.Errorf("NATS pause with a revoked token: %+v", n)
	}
	if _, err := nats.Connect(e.srv.NATSURL, nats.Token(op), nats.MaxReconnects(0)); err == nil {
		t.Error("a revoked token still opens a NATS connection")
	}
	if st := e.rollout(id).Status; st != "in_progress" {
		t.Fatalf("a revoked token changed the rollout: %s", st)
	}
}
