// Package target owns device target state: its JSON shape (docs/contract.md, "Target state"), the
// rewrite of the services that run one repository, the image index kept beside it, and the set-based
// writes to device_target_state and device_images.
//
// Target documents are handled as generic JSON so that fields fleetshift does not know survive every
// rewrite untouched.
package target

import (
	"encoding/json"
	"fmt"
	"sort"

	"github.com/fleetshift/fleetshift/shared/imageref"
)

// Apps is the "apps" object of a target state: app id -> app document.
type Apps map[string]any

// ParseApps decodes an apps object and checks its shape: each app an object whose "services", when
// present, is an array of objects whose "imageName" (or config.image) is a valid image reference.
func ParseApps(raw []byte) (Apps, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return Apps{}, nil
	}
	var apps Apps
	if err := json.Unmarshal(raw, &apps); err != nil {
		return nil, fmt.Errorf("apps must be an object: %w", err)
	}
	if _, err := Images(apps); err != nil {
		return nil, err
	}
	return apps, nil
}

// Image is one service's image in a target: where it is and what it runs.
type Image struct {
	AppID        string
	ServiceIndex int
	ServiceName  string
	Ref          imageref.Ref
	Raw          string // as written in the target
}

// Images lists the images of every service in apps, in a stable order (app id, service index).
func Images(apps Apps) ([]Image, error) {
	return imagesCached(apps, nil)
}

// imagesCached is Images reusing parsed references from cache (nil: no cache).
func imagesCached(apps Apps, cache map[string]imageref.Ref) ([]Image, error) {
	ids := make([]string, 0, len(apps))
	for id := range apps {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []Image
	for _, id := range ids {
		app, ok := apps[id].(map[string]any)
		if !ok {
			return nil, fmt.Errorf("apps.%s must be an object", id)
		}
		rawSvcs, present := app["services"]
		if !present || rawSvcs == nil {
			continue
		}
		svcs, ok := rawSvcs.([]any)
		if !ok {
			return nil, fmt.Errorf("apps.%s.services must be an array", id)
		}
		for i, s := range svcs {
			svc, ok := s.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("apps.%s.services[%d] must be an object", id, i)
			}
			raw := ServiceImage(svc)
			if raw == "" {
				continue
			}
			ref, ok := cache[raw]
			if !ok {
				var err error
				if ref, err = imageref.Parse(raw); err != nil {
					return nil, fmt.Errorf("apps.%s.services[%d].imageName: %w", id, i, err)
				}
				if cache != nil {
					cache[raw] = ref
				}
			}
			name, _ := svc["serviceName"].(string)
			out = append(out, Image{AppID: id, ServiceIndex: i, ServiceName: name, Ref: ref, Raw: raw})
		}
	}
	return out, nil
}

// ServiceImage is the image a service document runs: its imageName, else its config.image ("" if none).
func ServiceImage(svc map[string]any) string {
	if s, ok := svc["imageName"].(string); ok && s != "" {
		return s
	}
	if cfg, ok := svc["config"].(map[string]any); ok {
		if s, ok := cfg["image"].(string); ok {
			return s
		}
	}
	return ""
}

// SetImage returns a copy of apps in which every service running repository (normalised) whose
// current image satisfies keep (nil: every one) now runs image, in both imageName and config.image.
// Other apps and services are untouched. It reports whether anything changed and the first old
// image it replaced.
func SetImage(apps Apps, repository, image string, keep func(imageref.Ref) bool) (Apps, bool, string) {
	return SetImageWith(apps, repository, image, keep, nil)
}

// SetImageWith is SetImage that also sets each field of set on every service it moves (e.g. the
// policy's health check as "healthCheck"), so devices receive it with the new image.
func SetImageWith(apps Apps, repository, image string, keep func(imageref.Ref) bool, set map[string]any) (Apps, bool, string) {
	out := make(Apps, len(apps))
	changed, old := false, ""
	for id, a := range apps {
		out[id] = a
		app, ok := a.(map[string]any)
		if !ok {
			continue
		}
		svcs, ok := app["services"].([]any)
		if !ok {
			continue
		}
		var newSvcs []any
		for i, s := range svcs {
			svc, ok := s.(map[string]any)
			if !ok {
				continue
			}
			raw := ServiceImage(svc)
			if raw == "" || raw == image {
				continue
			}
			ref, err := imageref.Parse(raw)
			if err != nil || ref.Repository != repository || (keep != nil && !keep(ref)) {
				continue
			}
			if newSvcs == nil {
				newSvcs = append([]any(nil), svcs...)
			}
			ns := make(map[string]any, len(svc)+1)
			for k, v := range svc {
				ns[k] = v
			}
			for k, v := range set {
				ns[k] = v
			}
			ns["imageName"] = image
			cfg := map[string]any{}
			if c, ok := svc["config"].(map[string]any); ok {
				for k, v := range c {
					cfg[k] = v
				}
			}
			cfg["image"] = image
			ns["config"] = cfg
			newSvcs[i] = ns
			if old == "" {
				old = raw
			}
			changed = true
		}
		if newSvcs != nil {
			na := make(map[string]any, len(app))
			for k, v := range app {
				na[k] = v
			}
			na["services"] = newSvcs
			out[id] = na
		}
	}
	return out, changed, old
}
