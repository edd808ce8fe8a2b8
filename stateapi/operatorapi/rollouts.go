package operatorapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/imageref"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	"github.com/fleetshift/fleetshift/stateapi/internal/httpio"
)

// The statuses ?status= accepts (shared/lifecycle).
var (
	rolloutStatuses       = statusSet(lifecycle.Strings(lifecycle.Statuses...))
	deviceRolloutStatuses = statusSet(lifecycle.Strings(lifecycle.DeviceStatuses...))
)

func statusSet(statuses []string) map[string]bool {
	set := make(map[string]bool, len(statuses))
	for _, s := range statuses {
		set[s] = true
	}
	return set
}

// statusFilter reads ?status= (comma-separated) against the allowed set; nil when absent.
func statusFilter(c *fiber.Ctx, allowed map[string]bool) ([]string, error) {
	raw, err := httpio.Query(c, "status", 1000)
	if err != nil {
		return nil, err
	}
	if raw == "" {
		return nil, nil
	}
	var out []string
	for _, s := range strings.Split(raw, ",") {
		s = strings.TrimSpace(s)
		if !allowed[s] {
			return nil, apierr.Invalid("status", "unknown status %q", s)
		}
		out = append(out, s)
	}
	return out, nil
}

// rolloutJSON renders a rollout: every column of image_rollouts (policy snapshot included) plus progress.
const rolloutJSON = `to_jsonb(r) || jsonb_build_object('progress_percent', CASE WHEN r.total_devices = 0 THEN 0
	ELSE round(100.0 * (r.updated_devices + r.failed_devices) / r.total_devices, 1) END)`

// listRollouts: GET /api/v1/rollouts?status=&image_name=&limit=&cursor=, newest first, paged on
// (created_at, rollout_id).
func (s *Service) listRollouts(c *fiber.Ctx) error {
	statuses, err := statusFilter(c, rolloutStatuses)
	if err != nil {
		return err
	}
	limit, err := httpio.PageLimit(c, 50, s.cfg.MaxPageSize)
	if err != nil {
		return err
	}
	var image any
	raw, err := httpio.Query(c, "image_name", 1024)
	if err != nil {
		return err
	}
	if raw != "" {
		ref, err := imageref.Parse(raw)
		if err != nil {
			return apierr.Invalid("image_name", "%v", err)
		}
		image = ref.Familiar
	}
	cur, err := httpio.DecodeCursor(c, 2)
	if err != nil {
		return err
	}
	var afterAt, afterID any
	if cur != nil {
		t, err := time.Parse(time.RFC3339Nano, cur[0])
		if _, uerr := uuid.Parse(cur[1]); err != nil || uerr != nil {
			return apierr.Invalid("cursor", "not a cursor this list returned")
		}
		afterAt, afterID = t, cur[1]
	}
	rows, err := s.cfg.Pool.Query(c.UserContext(), `SELECT r.created_at, r.rollout_id::text, `+rolloutJSON+`
		FROM image_rollouts r
		WHERE ($1::text[] IS NULL OR r.status = ANY($1)) AND ($2::text IS NULL OR r.image_name = $2)
		  AND ($3::timestamptz IS NULL OR (r.created_at, r.rollout_id) < ($3, $4::uuid))
		ORDER BY r.created_at DESC, r.rollout_id DESC LIMIT $5`, statuses, image, afterAt, afterID, limit+1)
	if err != nil {
		return fmt.Errorf("list rollouts: %w", err)
	}
	type item struct {
		at  time.Time
		id  string
		doc json.RawMessage
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (item, error) {
		var it item
		err := r.Scan(&it.at, &it.id, &it.doc)
		return it, err
	})
	if err != nil {
		return fmt.Errorf("list rollouts: %w", err)
	}
	var next *string
	if len(list) > limit {
		list = list[:limit]
		last := list[limit-1]
		n := httpio.EncodeCursor(last.at.UTC().Format(time.RFC3339Nano), last.id)
		next = &n
	}
	docs := make([]json.RawMessage, len(list))
	for i, it := range list {
		docs[i] = it.doc
	}
	return c.JSON(fiber.Map{"rollouts": docs, "next_cursor": next})
}

// getRollout: GET /api/v1/rollouts/:id, with per-batch counts of device statuses.
func (s *Service) getRollout(c *fiber.Ctx) error {
	id, err := httpio.UUIDParam(c, "id")
	if err != nil {
		return err
	}
	var doc json.RawMessage
	err = s.cfg.Pool.QueryRow(c.UserContext(), `SELECT `+rolloutJSON+` || jsonb_build_object('batches', coalesce((
			SELECT jsonb_agg(b ORDER BY b.batch) FROM (
				SELECT batch_number AS batch, sum(n) AS total, jsonb_object_agg(status, n) AS statuses
				FROM (SELECT batch_number, status, count(*) AS n FROM device_rollout_status
				      WHERE rollout_id = r.rollout_id GROUP BY batch_number, status) x
				GROUP BY batch_number) b), '[]'::jsonb))
		FROM image_rollouts r WHERE r.rollout_id = $1`, id).Scan(&doc)
	if errors.Is(err, pgx.ErrNoRows) {
		return apierr.New(apierr.ErrNotFound, "rollout_not_found", "rollout %s not found", id)
	}
	if err != nil {
		return fmt.Errorf("read rollout %s: %w", id, err)
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(doc)
}

func (s *Service) requireRollout(c *fiber.Ctx) (string, error) {
	id, err := httpio.UUIDParam(c, "id")
	if err != nil {
		return "", err
	}
	var ok bool
	err = s.cfg.Pool.QueryRow(c.UserContext(), `SELECT true FROM image_rollouts WHERE rollout_id = $1`, id).Scan(&ok)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", apierr.New(apierr.ErrNotFound, "rollout_not_found", "rollout %s not found", id)
	}
	if err != nil {
		return "", fmt.Errorf("read rollout %s: %w", id, err)
	}
	return id, nil
}

// listRolloutDevices: GET /api/v1/rollouts/:id/devices?status=&limit=&cursor=, by batch then device.
func (s *Service) listRolloutDevices(c *fiber.Ctx) error {
	id, err := s.requireRollout(c)
	if err != nil {
		return err
	}
	statuses, err := statusFilter(c, deviceRolloutStatuses)
	if err != nil {
		return err
	}
	limit, err := httpio.PageLimit(c, 100, s.cfg.MaxPageSize)
	if err != nil {
		return err
	}
	cur, err := httpio.DecodeCursor(c, 2)
	if err != nil {
		return err
	}
	var afterBatch, afterDevice any
	if cur != nil {
		b, err := strconv.ParseInt(cur[0], 10, 32)
		if err != nil {
			return apierr.Invalid("cursor", "not a cursor this list returned")
		}
		afterBatch, afterDevice = b, cur[1]
	}
	rows, err := s.cfg.Pool.Query(c.UserContext(), `SELECT s.batch_number, s.device_uuid,
			to_jsonb(s) || jsonb_build_object('device_name', d.device_name)
		FROM device_rollout_status s JOIN devices d ON d.uuid = s.device_uuid
		WHERE s.rollout_id = $1 AND ($2::text[] IS NULL OR s.status = ANY($2))
		  AND ($3::int IS NULL OR (s.batch_number, s.device_uuid) > ($3, $4::text))
		ORDER BY s.batch_number, s.device_uuid LIMIT $5`, id, statuses, afterBatch, afterDevice, limit+1)
	if err != nil {
		return fmt.Errorf("list devices of rollout %s: %w", id, err)
	}
	type item struct {
		batch  int
		device string
		doc    json.RawMessage
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (item, error) {
		var it item
		err := r.Scan(&it.batch, &it.device, &it.doc)
		return it, err
	})
	if err != nil {
		return fmt.Errorf("list devices of rollout %s: %w", id, err)
	}
	var next *string
	if len(list) > limit {
		list = list[:limit]
		n := httpio.EncodeCursor(strconv.Itoa(list[limit-1].batch), list[limit-1].device)
		next = &n
	}
	docs := make([]json.RawMessage, len(list))
	for i, it := range list {
		docs[i] = it.doc
	}
	return c.JSON(fiber.Map{"devices": docs, "next_cursor": next})
}

// listRolloutEvents: GET /api/v1/rollouts/:id/events?type=&limit=&cursor=, oldest first.
func (s *Service) listRolloutEvents(c *fiber.Ctx) error {
	id, err := s.requireRollout(c)
	if err != nil {
		return err
	}
	limit, err := httpio.PageLimit(c, 200, s.cfg.MaxPageSize)
	if err != nil {
		return err
	}
	cur, err := httpio.DecodeCursor(c, 1)
	if err != nil {
		return err
	}
	var after, typ any
	if cur != nil {
		n, err := strconv.ParseInt(cur[0], 10, 64)
		if err != nil {
			return apierr.Invalid("cursor", "not a cursor this list returned")
		}
		after = n
	}
	t, err := httpio.Query(c, "type", 200)
	if err != nil {
		return err
	}
	if t != "" {
		typ = t
	}
	rows, err := s.cfg.Pool.Query(c.UserContext(), `SELECT e.id, to_jsonb(e) - 'id' FROM rollout_events e
		WHERE e.rollout_id = $1 AND ($2::bigint IS NULL OR e.id > $2) AND ($3::text IS NULL OR e.event_type = $3)
		ORDER BY e.id LIMIT $4`, id, after, typ, limit+1)
	if err != nil {
		return fmt.Errorf("list events of rollout %s: %w", id, err)
	}
	type item struct {
		seq int64
		doc json.RawMessage
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (item, error) {
		var it item
		err := r.Scan(&it.seq, &it.doc)
		return it, err
	})
	if err != nil {
		return fmt.Errorf("list events of rollout %s: %w", id, err)
	}
	var next *string
	if len(list) > limit {
		list = list[:limit]
		n := httpio.EncodeCursor(strconv.FormatInt(list[limit-1].seq, 10))
		next = &n
	}
	docs := make([]json.RawMessage, len(list))
	for i, it := range list {
		docs[i] = it.doc
	}
	return c.JSON(fiber.Map{"events": docs, "next_cursor": next})
}
