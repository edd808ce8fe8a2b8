package compose

import (
	"context"
	"errors"
	"os/exec"
	"time"
)

// ErrNoCompose says that neither Docker Compose v2 (`docker compose`) nor v1 (`docker-compose`) answers.
var ErrNoCompose = errors.New("no Docker Compose: neither `docker compose version` (the v2 plugin) answers nor is docker-compose (v1) on PATH")

// DetectCommand returns the Compose command to use: docker compose when `docker compose version`
// answers (the v2 plugin, preferred), else docker-compose (v1) when it is on PATH, else ErrNoCompose.
func DetectCommand(ctx context.Context, docker string) ([]string, error) {
	if docker == "" {
		docker = "docker"
	}
	vctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if exec.CommandContext(vctx, docker, "compose", "version").Run() == nil {
		return []string{docker, "compose"}, nil
	}
	if p, err := exec.LookPath("docker-compose"); err == nil {
		return []string{p}, nil
	}
	return nil, ErrNoCompose
}
