// Package runtime defines how the agent makes a device run its target: a Runtime turns a target's apps
// and services into running containers and tells what runs. Implementations: runtime/compose (Docker
// Compose on a real device) and the simulator's in-memory runtime (package sim).
package runtime

import (
	"context"

	"github.com/fleetshift/fleetshift/agent/wire"
)

// Runtime runs a device's apps.
//
// Apply brings the device to target: it is idempotent (applying the same target twice changes nothing
// the second time), removes apps the target no longer names, and when it cannot update a service (a
// failed pull) it leaves what ran before running and returns the error, which State then reports on
// the services concerned. A rollback is the Apply of a target naming the older image.
//
// State reports every app and service the runtime manages, as it runs now: image, container status
// ("running", "exited", ...) and Docker health when the container has one.
type Runtime interface {
	Apply(ctx context.Context, target wire.DeviceTarget) error
	State(ctx context.Context) (map[string]wire.ReportedApp, error)
}

// Puller is a Runtime that can download an image ahead of its use: Pull fetches image into the local
// image store without creating, stopping or changing any container, so that a later Apply naming it
// switches without a download. Pulling an image already present is cheap and harmless.
type Puller interface {
	Pull(ctx context.Context, image string) error
}
