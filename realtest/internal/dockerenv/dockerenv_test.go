package dockerenv_test

import (
	"context"
	"strings"
	"testing"

	"github.com/fleetshift/fleetshift/realtest/internal/dockerenv"
)

// TestRegistryPushAndPull: the registry container takes a push of the demo app and serves it back to
// the engine by tag and by digest.
func TestRegistryPushAndPull(t *testing.T) {
	reg := dockerenv.StartRegistry(t)
	ref, digestRef := reg.Push(t, dockerenv.DemoappV1, "dockerenv/demoapp:v1")
	if !strings.HasPrefix(digestRef, reg.Host+"/dockerenv/demoapp@sha256:") {
		t.Fatalf("digest reference %q", digestRef)
	}
	if _, err := dockerenv.DockerErr(t.Context(), "image", "inspect", ref); err == nil {
		t.Fatalf("%s is still tagged locally after the push", ref)
	}
	dockerenv.Docker(t, "pull", ref)
	// t.Context is over by cleanup time.
	t.Cleanup(func() { _, _ = dockerenv.DockerErr(context.Background(), "image", "rm", ref, digestRef) })
	if got, want := dockerenv.ImageID(t, ref), dockerenv.ImageID(t, dockerenv.DemoappV1); got != want {
		t.Fatalf("pulled %s is image %s, pushed %s", ref, got, want)
	}
	dockerenv.Docker(t, "pull", digestRef)
}
