// Command registry is CNCF Distribution's registry command with the filesystem and in-memory storage
// drivers and htpasswd auth: the image fleetshift/registry:dev that the Docker-backed tests push to and
// pull from. It is a module of its own so that the workspace never takes Distribution's dependencies.
package main

import (
	"os"

	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

func main() {
	if err := registry.RootCmd.Execute(); err != nil {
		os.Exit(1)
	}
}
