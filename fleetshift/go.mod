module github.com/fleetshift/fleetshift/fleetshift

go 1.26.0
