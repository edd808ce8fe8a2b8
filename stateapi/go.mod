module github.com/fleetshift/fleetshift/stateapi

go 1.26.0
