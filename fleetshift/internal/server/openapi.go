package server

import (
	"strings"

	"github.com/gofiber/fiber/v2"
)

// operation describes one route of the HTTP API for the OpenAPI document.
type operation struct {
	method, path, summary, tag string
	// auth: "" none, "device", "provisioning", "webhook", or an operator scope.
	auth     string
	request  string // component schema name of the JSON body, "" for none
	response string // component schema name of the 2xx body
	status   string // the success status
}

// operations is the whole HTTP API. TestOpenAPIDescribesEveryRoute keeps it and the router in step.
var operations = []operation{
	{"get", "/healthz", "Process is up", "system", "", "", "Ok", "200"},
	{"get", "/readyz", "Database and NATS reachable", "system", "", "", "Ok", "200"},
	{"get", "/metrics", "Prometheus metrics (fleetshift_*)", "system", "", "", "", "200"},
	{"get", "/api/v1/info", "Server information: the NATS URL devices and operators connect to", "system", "", "", "Info", "200"},
	{"get", "/api/v1/openapi.json", "This document", "system", "", "", "", "200"},
	{"get", "/api/v1/whoami", "The presented token's scope and name", "operators", "read", "", "Whoami", "200"},
	{"get", "/api/v1/images", "Image versions in devices' targets, counted per fleet (fleet_id, tag)", "operators", "read", "", "ImageCounts", "200"},
	{"get", "/api/v1/events/stream", "Live rollout events as Server-Sent Events (rollout; token also as ?token=)", "rollouts", "read", "", "", "200"},

	{"post", "/api/v1/webhooks/docker-registry", "Registry push webhook (Docker Hub, GitHub, Distribution/GitLab, Harbor, Quay, ACR, ECR, GAR)", "registries", "webhook", "", "WebhookAccepted", "202"},
	{"get", "/api/v1/webhooks/docker-registry/test", "Webhook endpoint liveness", "registries", "", "", "Ok", "200"},

	{"post", "/api/v1/device/register", "Register a device with a fleet provisioning key", "devices", "provisioning", "DeviceRegistration", "DeviceCredentials", "201"},
	{"get", "/api/v1/device/{uuid}/state", "Device target state (ETag / If-None-Match: 304 when unchanged)", "devices", "device", "", "DeviceStateDocument", "200"},
	{"patch", "/api/v1/device/state", "Report the device's current state", "devices", "device", "DeviceStateDocument", "Ok", "200"},

	{"post", "/api/v1/devices", "Create a device (its key is shown once)", "operators", "operate", "DeviceCreate", "DeviceCredentials", "201"},
	{"get", "/api/v1/devices", "List devices (fleet_id, tag, limit, cursor)", "operators", "read", "", "DeviceList", "200"},
	{"get", "/api/v1/devices/{uuid}", "Show a device", "operators", "read", "", "Device", "200"},
	{"delete", "/api/v1/devices/{uuid}", "Revoke a device: its key and NATS access stop working", "operators", "operate", "", "Ok", "200"},
	{"put", "/api/v1/devices/{uuid}/target-state", "Set a device's target state", "operators", "operate", "TargetState", "TargetStateWritten", "200"},
	{"get", "/api/v1/devices/{uuid}/target-state", "A device's target state", "operators", "read", "", "TargetState", "200"},
	{"get", "/api/v1/devices/{uuid}/current-state", "A device's last reported state", "operators", "read", "", "CurrentState", "200"},
	{"put", "/api/v1/fleets/{fleet_id}/target-state", "Set a fleet's default target state", "operators", "operate", "TargetState", "TargetState", "200"},
	{"get", "/api/v1/fleets/{fleet_id}/target-state", "A fleet's default target state", "operators", "read", "", "TargetState", "200"},

	{"post", "/api/v1/provisioning-keys", "Create a fleet provisioning key (shown once)", "operators", "admin", "ProvisioningKeyCreate", "ProvisioningKeyCreated", "201"},
	{"get", "/api/v1/provisioning-keys", "List provisioning keys", "operators", "admin", "", "ProvisioningKeyList", "200"},
	{"delete", "/api/v1/provisioning-keys/{id}", "Revoke a provisioning key", "operators", "admin", "", "Ok", "200"},
	{"post", "/api/v1/tokens", "Create an API token with a scope (shown once)", "operators", "admin", "TokenCreate", "TokenCreated", "201"},
	{"get", "/api/v1/tokens", "List API tokens", "operators", "admin", "", "TokenList", "200"},
	{"delete", "/api/v1/tokens/{id}", "Revoke an API token", "operators", "admin", "", "Ok", "200"},

	{"get", "/api/v1/image-policies", "List image update policies", "policies", "read", "", "PolicyList", "200"},
	{"post", "/api/v1/image-policies", "Create a policy", "policies", "operate", "Policy", "Policy", "201"},
	{"get", "/api/v1/image-policies/{id}", "Show a policy", "policies", "read", "", "Policy", "200"},
	{"put", "/api/v1/image-policies/{id}", "Replace a policy", "policies", "operate", "Policy", "Policy", "200"},
	{"delete", "/api/v1/image-policies/{id}", "Delete a policy", "policies", "operate", "", "Ok", "200"},
	{"post", "/api/v1/image-policies/replay", "Dry run: the rollouts a new or changed policy would have created for the pushes of the last days; writes nothing", "policies", "read", "ReplayRequest", "Replay", "200"},
	{"post", "/api/v1/image-policies/{id}/replay", "Dry run: the rollouts a stored policy would have created for the pushes of the last days; writes nothing", "policies", "read", "ReplayDays", "Replay", "200"},

	{"post", "/api/v1/rollouts/preview", "Dry run: the policy, batches and devices a push would touch; writes nothing", "rollouts", "read", "PreviewRequest", "Preview", "200"},
	{"get", "/api/v1/rollouts", "List rollouts (status, image_name, limit, cursor)", "rollouts", "read", "", "RolloutList", "200"},
	{"get", "/api/v1/rollouts/{id}", "Show a rollout", "rollouts", "read", "", "Rollout", "200"},
	{"get", "/api/v1/rollouts/{id}/devices", "A rollout's devices (status, limit, cursor)", "rollouts", "read", "", "RolloutDeviceList", "200"},
	{"get", "/api/v1/rollouts/{id}/devices/{uuid}", "One device of a rollout, with why it failed and its failed container's log tail", "rollouts", "read", "", "RolloutDevice", "200"},
	{"get", "/api/v1/rollouts/{id}/events", "A rollout's events", "rollouts", "read", "", "EventList", "200"},
	{"post", "/api/v1/rollouts/{id}/start", "Start a pending (manual) rollout", "control", "operate", "", "ControlResult", "200"},
	{"post", "/api/v1/rollouts/{id}/pause", "Pause a rollout: nothing further is dispatched", "control", "operate", "", "ControlResult", "200"},
	{"post", "/api/v1/rollouts/{id}/resume", "Resume a paused rollout", "control", "operate", "", "ControlResult", "200"},
	{"post", "/api/v1/rollouts/{id}/cancel", "Cancel: stop dispatching, leave moved devices where they are", "control", "operate", "", "ControlResult", "200"},
	{"post", "/api/v1/rollouts/{id}/rollback-all", "Move every moved device back to its own old image", "control", "operate", "", "ControlResult", "200"},
	{"post", "/api/v1/rollouts/{id}/approve", "Approve the next batch of a batch_approval rollout", "control", "operate", "", "ControlResult", "200"},
	{"post", "/api/v1/rollouts/{id}/devices/{uuid}/rollback", "Move one device back to its old image", "control", "operate", "", "ControlResult", "200"},
	{"post", "/api/v1/rollouts/{id}/retry", "Re-dispatch failed devices (all, or device_uuids) of an in-progress, paused or awaiting-approval rollout", "control", "operate", "RetryRequest", "RetryResult", "200"},

	{"post", "/api/v1/notifications", "Subscribe a URL to rollout events (paused, failed, completed, rolled_back); the signing secret is shown once", "notifications", "admin", "NotificationCreate", "Notification", "201"},
	{"get", "/api/v1/notifications", "List notification subscriptions with delivery counts and the newest delivery (below admin, each URL is cut to its scheme and host)", "notifications", "read", "", "NotificationList", "200"},
	{"get", "/api/v1/notifications/{id}", "Show a notification subscription (below admin, its URL is cut to its scheme and host)", "notifications", "read", "", "Notification", "200"},
	{"delete", "/api/v1/notifications/{id}", "Delete a notification subscription and its deliveries", "notifications", "admin", "", "", "204"},
	{"get", "/api/v1/notifications/{id}/deliveries", "A subscription's deliveries, newest first (status, limit): attempts, last status code, last error", "notifications", "read", "", "DeliveryList", "200"},
}

// OpenAPI returns the OpenAPI 3.1 document of the HTTP API.
func OpenAPI() map[string]any {
	paths := map[string]any{}
	for _, op := range operations {
		item, _ := paths[op.path].(map[string]any)
		if item == nil {
			item = map[string]any{}
			paths[op.path] = item
		}
		o := map[string]any{
			"summary":     op.summary,
			"tags":        []string{op.tag},
			"operationId": op.method + strings.NewReplacer("/api/v1/", "_", "/", "_", "{", "", "}", "", "-", "_", ".", "_").Replace(op.path),
		}
		var params []any
		for _, seg := range strings.Split(op.path, "/") {
			if strings.HasPrefix(seg, "{") {
				params = append(params, map[string]any{"name": strings.Trim(seg, "{}"), "in": "path", "required": true, "schema": map[string]any{"type": "string"}})
			}
		}
		if params != nil {
			o["parameters"] = params
		}
		switch op.auth {
		case "":
			o["security"] = []any{}
		case "device":
			o["security"] = []any{map[string]any{"deviceKey": []string{}}, map[string]any{"bearer": []string{}}}
		case "provisioning":
			o["security"] = []any{map[string]any{"bearer": []string{}}}
		case "webhook":
			o["security"] = []any{map[string]any{"webhookToken": []string{}}, map[string]any{"bearer": []string{}}, map[string]any{"hubSignature": []string{}}}
		default:
			o["security"] = []any{map[string]any{"bearer": []string{op.auth}}}
			o["description"] = "Requires an API token with scope `" + op.auth + "` or higher."
		}
		if op.request != "" {
			o["requestBody"] = map[string]any{"required": true, "content": map[string]any{"application/json": map[string]any{"schema": ref(op.request)}}}
		}
		ok := map[string]any{"description": "success"}
		if op.response != "" {
			ok["content"] = map[string]any{"application/json": map[string]any{"schema": ref(op.response)}}
		}
		responses := map[string]any{op.status: ok, "default": map[string]any{"description": "error", "content": map[string]any{"application/json": map[string]any{"schema": ref("Error")}}}}
		if strings.HasSuffix(op.path, "/state") && op.method == "get" {
			responses["304"] = map[string]any{"description": "not modified: the If-None-Match ETag is current"}
		}
		o["responses"] = responses
		item[op.method] = o
	}
	return map[string]any{
		"openapi": "3.1.0",
		"info": map[string]any{"title": "fleetshift", "version": "1",
			"description": "Staged, health-gated container image rollouts for device fleets. Errors are {\"error\": {\"code\", \"message\", \"field\"?}} (field: the JSON path at fault). 413 body_too_large / too_many_pushes, 429 rate_limited and 503 unavailable / overloaded; 429 and 503 carry Retry-After (seconds). Limits: docs/reliability.md."},
		"paths": paths,
		"components": map[string]any{
			"securitySchemes": map[string]any{
				"bearer":       map[string]any{"type": "http", "scheme": "bearer"},
				"deviceKey":    map[string]any{"type": "apiKey", "in": "header", "name": "X-Device-API-Key"},
				"webhookToken": map[string]any{"type": "apiKey", "in": "query", "name": "token"},
				"hubSignature": map[string]any{"type": "apiKey", "in": "header", "name": "X-Hub-Signature-256"},
			},
			"schemas": schemas(),
		},
	}
}

func ref(name string) map[string]any { return map[string]any{"$ref": "#/components/schemas/" + name} }

func obj(props map[string]any, required ...string) map[string]any {
	o := map[string]any{"type": "object", "properties": props}
	if len(required) > 0 {
		o["required"] = required
	}
	return o
}

func list(key, item string) map[string]any {
	return obj(map[string]any{key: map[string]any{"type": "array", "items": ref(item)}, "next_cursor": str})
}

var (
	str     = map[string]any{"type": "string"}
	integer = map[string]any{"type": "integer"}
	number  = map[string]any{"type": "number"}
	boolean = map[string]any{"type": "boolean"}
	anyObj  = map[string]any{"type": "object"}
	strs    = map[string]any{"type": "array", "items": map[string]any{"type": "string"}}
	stamp   = map[string]any{"type": "string", "format": "date-time"}
)

func schemas() map[string]any {
	policy := obj(map[string]any{
		"id": integer, "image_pattern": str,
		"update_strategy":     map[string]any{"type": "string", "enum": []string{"auto", "staged", "manual", "scheduled", "rate"}},
		"staged_batches":      integer,
		"batch_percentages":   map[string]any{"type": "array", "items": integer},
		"batch_delay_minutes": integer, "batch_delay_seconds": integer, "health_check_enabled": boolean,
		"health_check_timeout_seconds": integer, "health_check_config": anyObj, "auto_rollback_enabled": boolean,
		"max_failure_rate": number, "min_sample_size": integer, "maintenance_window_start": str,
		"maintenance_window_end": str, "timezone": str, "fleet_id": str, "device_tags": strs, "device_uuids": strs,
		"priority": integer, "enabled": boolean, "description": str,
		"tag_policy":   map[string]any{"type": "string", "enum": []string{"glob", "semver"}},
		"semver_range": str, "batch_approval": boolean,
		"offline_grace_seconds": integer, "offline_action": map[string]any{"type": "string", "enum": []string{"skip", "fail"}},
		"dynamic_inclusion": boolean, "max_retries": integer, "download_ahead": boolean, "created_at": stamp, "updated_at": stamp,
		"rate_base_per_minute": integer, "rate_increment_factor": number,
		"rate_increase_criteria":  map[string]any{"type": "string", "enum": []string{"notified", "succeeded"}},
		"rate_increase_threshold": integer, "rate_maximum_per_minute": integer,
	}, "image_pattern")
	rollout := obj(map[string]any{
		"rollout_id": str, "policy_id": integer, "image_name": str, "old_tag": str, "new_tag": str, "new_digest": str,
		"strategy": str, "status": str, "current_batch": integer, "total_batches": integer,
		"batch_sizes": map[string]any{"type": "array", "items": integer}, "total_devices": integer,
		"updated_devices": integer, "failed_devices": integer, "healthy_devices": integer, "rolled_back_devices": integer,
		"downloaded_devices": integer, "failure_rate": number, "auto_paused": boolean, "created_at": stamp, "started_at": stamp, "completed_at": stamp,
		"next_batch_at": stamp, "rate_per_minute": integer, "rate_dispatched": integer, "rate_raised_at": integer,
	})
	device := obj(map[string]any{"uuid": str, "device_name": str, "fleet_id": str, "tags": strs, "is_online": boolean,
		"last_seen_at": stamp, "created_at": stamp})
	target := obj(map[string]any{"apps": anyObj, "config": anyObj, "version": integer,
		"prefetch": map[string]any{"type": "array", "items": obj(map[string]any{"image": str, "rollout_id": str})}})
	notification := obj(map[string]any{"id": str, "name": str, "url": str, "format": str, "event_types": strs,
		"created_by": str, "created_at": stamp, "secret": str, "pending": integer, "delivered": integer, "failed": integer,
		"latest_delivery": obj(map[string]any{"id": integer, "event_type": str,
			"status":   map[string]any{"type": "string", "enum": []string{"pending", "delivered", "failed"}},
			"attempts": integer, "last_status_code": integer, "last_attempt_at": stamp, "created_at": stamp})})
	notificationCreate := obj(map[string]any{"name": str, "url": str,
		"format":      map[string]any{"type": "string", "enum": []string{"json", "slack"}},
		"event_types": map[string]any{"type": "array", "items": map[string]any{"type": "string", "enum": []string{"paused", "failed", "completed", "rolled_back"}}},
	}, "name", "url")
	delivery := obj(map[string]any{"id": integer, "event_id": str, "event_type": str, "rollout_id": str,
		"status":   map[string]any{"type": "string", "enum": []string{"pending", "delivered", "failed"}},
		"attempts": integer, "last_status_code": integer, "last_error": str, "next_attempt_at": stamp,
		"last_attempt_at": stamp, "delivered_at": stamp, "created_at": stamp})
	return map[string]any{
		"Error":                  obj(map[string]any{"error": obj(map[string]any{"code": str, "message": str, "field": str}, "code", "message")}, "error"),
		"Ok":                     anyObj,
		"Info":                   obj(map[string]any{"name": str, "nats_url": str, "subject_prefix": str}),
		"WebhookAccepted":        obj(map[string]any{"event_id": str, "event_ids": strs, "ignored": str}),
		"DeviceRegistration":     obj(map[string]any{"device_name": str, "tags": strs}, "device_name"),
		"DeviceCredentials":      obj(map[string]any{"uuid": str, "api_key": str, "nats_url": str}, "uuid", "api_key"),
		"DeviceStateDocument":    map[string]any{"type": "object", "description": "keyed by device uuid", "additionalProperties": target},
		"DeviceCreate":           obj(map[string]any{"uuid": str, "device_name": str, "fleet_id": str, "tags": strs}, "device_name"),
		"Device":                 device,
		"DeviceList":             list("devices", "Device"),
		"TargetState":            target,
		"Notification":           notification,
		"NotificationCreate":     notificationCreate,
		"NotificationList":       obj(map[string]any{"notifications": map[string]any{"type": "array", "items": ref("Notification")}}),
		"DeliveryList":           obj(map[string]any{"notification_id": str, "deliveries": map[string]any{"type": "array", "items": delivery}}),
		"TargetStateWritten":     obj(map[string]any{"version": integer, "etag": str}),
		"CurrentState":           obj(map[string]any{"apps": anyObj, "config": anyObj, "reported_at": stamp}),
		"ProvisioningKeyCreate":  obj(map[string]any{"fleet_id": str, "expires_at": stamp, "max_devices": integer}, "fleet_id"),
		"ProvisioningKeyCreated": obj(map[string]any{"id": str, "key": str}, "id", "key"),
		"ProvisioningKeyList":    obj(map[string]any{"provisioning_keys": map[string]any{"type": "array", "items": anyObj}}),
		"TokenCreate":            obj(map[string]any{"name": str, "scope": map[string]any{"type": "string", "enum": []string{"read", "operate", "admin"}}}, "name", "scope"),
		"TokenCreated":           obj(map[string]any{"id": str, "token": str}, "id", "token"),
		"TokenList":              obj(map[string]any{"tokens": map[string]any{"type": "array", "items": anyObj}}),
		"Policy":                 policy,
		"PolicyList":             list("policies", "Policy"),
		"ReplayRequest":          obj(map[string]any{"policy": policy, "days": integer}, "policy"),
		"ReplayDays":             obj(map[string]any{"days": integer}),
		"Replay": obj(map[string]any{"days": integer, "since": stamp, "policy": anyObj, "pushes": integer, "truncated": boolean,
			"rollouts": map[string]any{"type": "array", "items": anyObj}, "skipped": map[string]any{"type": "array", "items": anyObj}}),
		"PreviewRequest": obj(map[string]any{"image": str, "digest": str}, "image"),
		"Preview": obj(map[string]any{"policy": anyObj, "image": str, "batches": map[string]any{"type": "array", "items": anyObj}, "excluded": map[string]any{"type": "array", "items": anyObj},
			"rate": obj(map[string]any{"base_per_minute": integer, "maximum_per_minute": integer, "increment_factor": number,
				"increase_criteria": str, "increase_threshold": integer, "chunk_size": integer, "interval_seconds": number,
				"min_dispatch_seconds": number})}),
		"Rollout":           rollout,
		"RolloutList":       list("rollouts", "Rollout"),
		"RolloutDevice":     obj(map[string]any{"device_uuid": str, "batch_number": integer, "status": str, "old_image_tag": str, "new_image_tag": str, "scheduled_at": stamp, "error_message": str, "failure_reason": str, "failure_log": str, "retry_count": integer}),
		"RetryRequest":      obj(map[string]any{"device_uuids": strs}),
		"RetryResult":       obj(map[string]any{"ok": boolean, "status": str, "changed": boolean, "retried": strs, "rollout": ref("Rollout")}),
		"RolloutDeviceList": list("devices", "RolloutDevice"),
		"Event":             obj(map[string]any{"id": str, "type": str, "rollout_id": str, "device_uuid": str, "message": str, "data": anyObj, "actor": str, "timestamp": stamp}),
		"EventList":         list("events", "Event"),
		"Whoami":            obj(map[string]any{"scope": str, "name": str}, "scope", "name"),
		"ImageCounts":       obj(map[string]any{"images": map[string]any{"type": "array", "items": obj(map[string]any{"repository": str, "tag": str, "fleet_id": str, "devices": integer, "online": integer})}}),
		"ControlResult":     obj(map[string]any{"ok": boolean, "status": str, "rollout": ref("Rollout")}),
	}
}

// registerOpenAPI serves the document.
func registerOpenAPI(app *fiber.App) {
	doc := OpenAPI()
	app.Get("/api/v1/openapi.json", func(c *fiber.Ctx) error { return c.JSON(doc) })
}
