// Package realtest holds the Docker-backed tests: they run the agent, the server and a Distribution
// registry against a real Docker engine, from images built by make images. Without an engine they skip
// (FLEETSHIFT_REQUIRE_DOCKER=1 makes that a failure); make test-docker runs them.
package realtest
