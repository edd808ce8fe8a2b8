module github.com/fleetshift/fleetshift/deploy/images/demoapp

go 1.26.0
