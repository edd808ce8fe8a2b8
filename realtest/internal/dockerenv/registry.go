package dockerenv

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
)

// Registry is a running fleetshift/registry:dev container (CNCF Distribution, filesystem storage).
type Registry struct {
	// Host is "127.0.0.1:<port>", the registry's address on the host: image references start with it
	// (the engine treats 127.0.0.0/8 registries as plain-HTTP by default).
	Host string
	// Container is the testcontainers handle; it is terminated by t.Cleanup.
	Container testcontainers.Container
}

// StartRegistry builds the images if needed (see Images), starts a registry on a free host port, waits
// until /v2/ answers and registers its termination with t.Cleanup (its logs are printed when t failed).
// opts customise the container (a config with notifications, say).
func StartRegistry(t testing.TB, opts ...testcontainers.ContainerCustomizer) *Registry {
	t.Helper()
	Images(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	all := append([]testcontainers.ContainerCustomizer{testcontainers.WithExposedPorts("5000/tcp")}, opts...)
	ctr, err := testcontainers.Run(ctx, RegistryImage, all...)
	testcontainers.CleanupContainer(t, ctr)
	if err != nil {
		t.Fatalf("start registry container %s: %v", RegistryImage, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := DockerErr(context.Background(), "logs", "--tail", "40", ctr.GetContainerID())
			t.Logf("registry logs (last 40 lines):\n%s", logs)
		}
	})
	port, err := ctr.MappedPort(ctx, "5000/tcp")
	if err != nil {
		t.Fatalf("registry container: mapped port of 5000/tcp: %v", err)
	}
	host := fmt.Sprintf("127.0.0.1:%d", port.Num())
	if err := waitHTTP(ctx, "http://"+host+"/v2/"); err != nil {
		t.Fatalf("registry container: %v", err)
	}
	return &Registry{Host: host, Container: ctr}
}

// Ref returns the registry's reference for a repository path and tag, e.g. Ref("fleetshift/demoapp:v1")
// is "127.0.0.1:PORT/fleetshift/demoapp:v1".
func (r *Registry) Ref(repoTag string) string { return r.Host + "/" + repoTag }

// Push tags the local image as Ref(repoTag), pushes it and removes that tag again (the image stays under
// its local name), so that a later pull of the reference really comes from the registry. It returns the
// reference and its digest reference (Host/repo@sha256:...).
func (r *Registry) Push(t testing.TB, local, repoTag string) (ref, digestRef string) {
	t.Helper()
	ref = r.Ref(repoTag)
	Docker(t, "tag", local, ref)
	Docker(t, "push", ref)
	repo := ref[:strings.LastIndex(ref, ":")]
	digests := Docker(t, "image", "inspect", "--format", `{{range .RepoDigests}}{{println .}}{{end}}`, ref)
	for _, d := range strings.Fields(digests) {
		if strings.HasPrefix(d, repo+"@") {
			digestRef = d
		}
	}
	if digestRef == "" {
		t.Fatalf("push %s: no repo digest for %s among %q", ref, repo, digests)
	}
	Docker(t, "image", "rm", ref)
	return ref, digestRef
}

// waitHTTP polls url until it answers 200 or ctx ends.
func waitHTTP(ctx context.Context, url string) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("wait for %s: %w", url, err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last: %v)", url, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// ImageID returns the image ID (sha256:...) of a local image or container's image reference.
func ImageID(t testing.TB, ref string) string {
	t.Helper()
	return Docker(t, "image", "inspect", "--format", "{{.ID}}", ref)
}
