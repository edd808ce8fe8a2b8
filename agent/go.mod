module github.com/fleetshift/fleetshift/agent

go 1.26.0
