module github.com/fleetshift/fleetshift/planner

go 1.26.0
