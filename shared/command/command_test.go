package command_test

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetshift/fleetshift/shared/command"
	"github.com/fleetshift/fleetshift/streams"
)

// TestMsgIDIsDeterministic: the same request is the same message id (JetStream drops the copy); a
// different batch, purpose or discriminator is a different one.
func TestMsgIDIsDeterministic(t *testing.T) {
	t.Parallel()
	subj := streams.New("")
	base := command.Dispatch{RolloutID: "7d0e9c1e-0000-4000-8000-000000000001", Batch: 2, Purpose: command.Next}
	m1, err := base.Message(subj)
	if err != nil {
		t.Fatal(err)
	}
	m2, _ := base.Message(subj)
	if m1.ID != m2.ID || m1.ID != "dispatch-7d0e9c1e-0000-4000-8000-000000000001-2-next" {
		t.Fatalf("ids %q %q", m1.ID, m2.ID)
	}
	if m1.Subject != subj.Command(streams.CommandDispatch, base.RolloutID) {
		t.Fatalf("subject %q", m1.Subject)
	}
	var body streams.DispatchV1
	if err := json.Unmarshal(m1.Payload, &body); err != nil || body.RolloutID != base.RolloutID || body.Batch != 2 {
		t.Fatalf("payload %s: %v", m1.Payload, err)
	}
	seen := map[string]bool{m1.ID: true}
	for _, d := range []command.Dispatch{
		{RolloutID: base.RolloutID, Batch: 3, Purpose: command.Next},
		{RolloutID: base.RolloutID, Batch: 2, Purpose: command.First},
		{RolloutID: base.RolloutID, Batch: 2, Purpose: command.Retry, Discriminator: "1700000000000"},
		{RolloutID: base.RolloutID, Batch: 2, Purpose: command.Retry, Discriminator: "1700000000001"},
		{RolloutID: base.RolloutID, Batch: 2, Purpose: command.Continue, Discriminator: "dev-9"},
	} {
		if seen[d.MsgID()] {
			t.Fatalf("%+v shares id %s", d, d.MsgID())
		}
		seen[d.MsgID()] = true
	}
	// A rate chunk carries its total (up_to) and is told apart by its discriminator.
	rate := command.Dispatch{RolloutID: base.RolloutID, Batch: 1, Purpose: command.Rate, Discriminator: "7-1700000000000", UpTo: 7}
	m3, err := rate.Message(subj)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(m3.Payload, &body); err != nil || body.UpTo != 7 || body.Batch != 1 {
		t.Fatalf("rate payload %s: %v", m3.Payload, err)
	}
	if m3.ID != "dispatch-"+base.RolloutID+"-1-rate-7-1700000000000" || seen[m3.ID] {
		t.Fatalf("rate id %q", m3.ID)
	}
	if _, err := base.Message(subj); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []command.Dispatch{{Batch: 1, Purpose: command.First}, {RolloutID: "r", Purpose: command.First}, {RolloutID: "r", Batch: 1},
		{RolloutID: "r", Batch: 1, Purpose: command.Rate, Discriminator: "x"}, {RolloutID: "r", Batch: 1, Purpose: command.Next, UpTo: 3}} {
		if _, err := bad.Message(subj); err == nil {
			t.Fatalf("%+v accepted", bad)
		}
	}
}

// TestOnlyThisPackageBuildsDispatchCommands: no other production code builds a DispatchV1 command, so
// every batch request goes through Request with its deterministic id.
func TestOnlyThisPackageBuildsDispatchCommands(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") ||
			strings.HasSuffix(path, filepath.Join("shared", "command", "command.go")) {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.Contains(string(b), "DispatchV1{") {
			t.Errorf("%s builds a DispatchV1 itself; use shared/command", strings.TrimPrefix(path, root+string(filepath.Separator)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
