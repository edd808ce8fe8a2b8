module github.com/fleetshift/fleetshift/dispatcher

go 1.26.0
