module github.com/fleetshift/fleetshift/fleetshift

go 1.26.0

require (
	github.com/fleetshift/fleetshift/dispatcher v0.0.0
	github.com/fleetshift/fleetshift/healthwatch v0.0.0
	github.com/fleetshift/fleetshift/ingest v0.0.0
	github.com/fleetshift/fleetshift/migrations v0.0.0
	github.com/fleetshift/fleetshift/planner v0.0.0
	github.com/fleetshift/fleetshift/shared v0.0.0
	github.com/fleetshift/fleetshift/stateapi v0.0.0
	github.com/fleetshift/fleetshift/streams v0.0.0
	github.com/fleetshift/fleetshift/agent v0.0.0
)

replace (
	github.com/fleetshift/fleetshift/agent => ../agent
	github.com/fleetshift/fleetshift/dispatcher => ../dispatcher
	github.com/fleetshift/fleetshift/healthwatch => ../healthwatch
	github.com/fleetshift/fleetshift/ingest => ../ingest
	github.com/fleetshift/fleetshift/migrations => ../migrations
	github.com/fleetshift/fleetshift/planner => ../planner
	github.com/fleetshift/fleetshift/shared => ../shared
	github.com/fleetshift/fleetshift/stateapi => ../stateapi
	github.com/fleetshift/fleetshift/streams => ../streams
)
