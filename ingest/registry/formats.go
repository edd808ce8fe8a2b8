package registry

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"strings"
	"time"
)

// Docker Hub: {"push_data": {"tag", "pushed_at", "pusher"}, "repository": {"repo_name"}}. No digest,
// no delivery id: the dedupe key is repository, tag and pushed_at.
func parseDockerHub(body []byte) (Result, error) {
	res := Result{Registry: DockerHub}
	var p struct {
		PushData struct {
			Tag      string   `json:"tag"`
			PushedAt flexTime `json:"pushed_at"`
			Pusher   string   `json:"pusher"`
		} `json:"push_data"`
		Repository struct {
			RepoName  string `json:"repo_name"`
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
		} `json:"repository"`
	}
	if err := decode(DockerHub, body, &p); err != nil {
		return res, err
	}
	repo := p.Repository.RepoName
	if repo == "" && p.Repository.Name != "" {
		repo = strings.Trim(p.Repository.Namespace+"/"+p.Repository.Name, "/")
	}
	if repo == "" {
		return res, unreadable("dockerhub payload without repository.repo_name")
	}
	if p.PushData.Tag == "" {
		res.ignore(ReasonUntagged)
		return res, nil
	}
	push, err := newPush(DockerHub, repo, p.PushData.Tag, "", p.PushData.PushedAt.Time, p.PushData.Pusher, "")
	if err != nil {
		return res, err
	}
	res.Pushes = append(res.Pushes, push)
	return res, nil
}

type ghPayload struct {
	Action          string     `json:"action"`
	Package         *ghPackage `json:"package"`
	RegistryPackage *ghPackage `json:"registry_package"`
	Sender          struct {
		Login string `json:"login"`
	} `json:"sender"`
}

type ghPackage struct {
	Name        string   `json:"name"`
	Namespace   string   `json:"namespace"`
	Ecosystem   string   `json:"ecosystem"`
	PackageType string   `json:"package_type"`
	UpdatedAt   flexTime `json:"updated_at"`
	Owner       struct {
		Login string `json:"login"`
	} `json:"owner"`
	Registry struct {
		Type string `json:"type"`
		URL  string `json:"url"`
	} `json:"registry"`
	PackageVersion *struct {
		Version           string   `json:"version"`
		PackageURL        string   `json:"package_url"`
		CreatedAt         flexTime `json:"created_at"`
		UpdatedAt         flexTime `json:"updated_at"`
		ContainerMetadata *struct {
			Tag struct {
				Name   string `json:"name"`
				Digest string `json:"digest"`
			} `json:"tag"`
		} `json:"container_metadata"`
	} `json:"package_version"`
}

// GitHub: X-GitHub-Event `package` (current) or `registry_package` (older), actions published and
// updated. The image is package_version.package_url ("ghcr.io/owner/name:tag"), else
// ghcr.io/<owner>/<name>; the tag and digest are package_version.container_metadata.tag.
func parseGitHub(body []byte, event, delivery string) (Result, error) {
	res := Result{Registry: GitHub}
	switch strings.ToLower(event) {
	case "", "package", "registry_package":
	case "ping":
		res.ignore(ReasonPing)
		return res, nil
	default:
		res.ignore("github " + event + " event")
		return res, nil
	}
	var p ghPayload
	if err := decode(GitHub, body, &p); err != nil {
		return res, err
	}
	pkg := p.Package
	if pkg == nil {
		pkg = p.RegistryPackage
	}
	if pkg == nil {
		return res, unreadable("github payload without package or registry_package")
	}
	if a := strings.ToLower(p.Action); a != "published" && a != "updated" && a != "" {
		res.ignore("github package " + p.Action)
		return res, nil
	}
	v := pkg.PackageVersion
	if !ghIsContainer(pkg) {
		res.ignore(ReasonNotContainer)
		return res, nil
	}
	var tag, digest, pkgURL string
	var pushedAt time.Time
	if v != nil {
		pkgURL = v.PackageURL
		if v.ContainerMetadata != nil {
			tag, digest = v.ContainerMetadata.Tag.Name, v.ContainerMetadata.Tag.Digest
		}
		pushedAt = v.UpdatedAt.Time
		if pushedAt.IsZero() {
			pushedAt = v.CreatedAt.Time
		}
		if digest == "" && strings.HasPrefix(v.Version, "sha256:") {
			digest = v.Version
		}
	}
	if pushedAt.IsZero() {
		pushedAt = pkg.UpdatedAt.Time
	}
	repo, urlTag, _ := splitRef(strings.TrimPrefix(strings.TrimPrefix(pkgURL, "https://"), "http://"))
	if tag == "" {
		tag = urlTag
	}
	if !domainLike(firstSegment(repo)) {
		repo = ghRepository(pkg)
	}
	if repo == "" {
		return res, unreadable("github package without package_url or name")
	}
	if tag == "" {
		res.ignore(ReasonUntagged)
		return res, nil
	}
	push, err := newPush(GitHub, repo, tag, digest, pushedAt, p.Sender.Login, delivery)
	if err != nil {
		return res, err
	}
	res.Pushes = append(res.Pushes, push)
	return res, nil
}

func ghIsContainer(pkg *ghPackage) bool {
	isContainer := func(s string) bool {
		s = strings.ToLower(s)
		return s == "container" || s == "docker"
	}
	if isContainer(pkg.PackageType) || isContainer(pkg.Ecosystem) || isContainer(pkg.Registry.Type) {
		return true
	}
	if pkg.PackageVersion != nil && pkg.PackageVersion.ContainerMetadata != nil {
		return true
	}
	return pkg.PackageType == "" && pkg.Ecosystem == ""
}

// ghRepository is ghcr.io/<owner>/<name> for a package without a usable package_url.
func ghRepository(pkg *ghPackage) string {
	name := pkg.Name
	if n, err := url.PathUnescape(name); err == nil {
		name = n
	}
	owner := pkg.Owner.Login
	if owner == "" {
		owner, _, _ = strings.Cut(pkg.Namespace, "/")
	}
	if name == "" || owner == "" {
		return ""
	}
	return "ghcr.io/" + owner + "/" + name
}

func firstSegment(s string) string {
	first, _, _ := strings.Cut(s, "/")
	return first
}

type distEvent struct {
	ID        string   `json:"id"`
	Timestamp flexTime `json:"timestamp"`
	Action    string   `json:"action"`
	Target    struct {
		MediaType  string `json:"mediaType"`
		Digest     string `json:"digest"`
		Repository string `json:"repository"`
		URL        string `json:"url"`
		Tag        string `json:"tag"`
	} `json:"target"`
	Request struct {
		Host string `json:"host"`
	} `json:"request"`
	Actor struct {
		Name string `json:"name"`
	} `json:"actor"`
}

// Distribution and GitLab: {"events": [...]}, each event a manifest or blob action. Only manifest
// pushes by tag are pushes; the host (with its port) comes from request.host, else target.url.
func parseDistribution(body []byte) (Result, error) {
	res := Result{Registry: Distribution}
	var env struct {
		Events []distEvent `json:"events"`
	}
	if err := decode(Distribution, body, &env); err != nil {
		return res, err
	}
	if len(env.Events) == 0 {
		return res, unreadable("distribution notification with no events")
	}
	for _, ev := range env.Events {
		if err := distPush(&res, Distribution, ev); err != nil {
			return res, err
		}
	}
	return res, nil
}

// ACR sends one Distribution-shaped event without the envelope.
func parseACR(body []byte) (Result, error) {
	res := Result{Registry: ACR}
	var ev distEvent
	if err := decode(ACR, body, &ev); err != nil {
		return res, err
	}
	switch strings.ToLower(ev.Action) {
	case "chart_push", "chart_delete":
		res.ignore("helm chart")
		return res, nil
	}
	return res, distPush(&res, ACR, ev)
}

func distPush(res *Result, registry string, ev distEvent) error {
	switch strings.ToLower(ev.Action) {
	case "push":
	case "pull":
		res.ignore(ReasonPull)
		return nil
	case "delete":
		res.ignore(ReasonDelete)
		return nil
	case "mount":
		res.ignore(ReasonBlob)
		return nil
	default:
		res.ignore(registry + " " + ev.Action + " event")
		return nil
	}
	if isBlob(ev.Target.MediaType, ev.Target.URL) {
		res.ignore(ReasonBlob)
		return nil
	}
	if ev.Target.Repository == "" {
		return unreadable("%s event %q without target.repository", registry, ev.ID)
	}
	if ev.Target.Tag == "" {
		res.ignore(ReasonUntagged)
		return nil
	}
	host := ev.Request.Host
	if !domainLike(host) {
		if u := hostFromURL(ev.Target.URL); domainLike(u) {
			host = u
		}
	}
	if !domainLike(host) {
		return unreadable("%s event %q: registry host %q is not a host name", registry, ev.ID, host)
	}
	push, err := newPush(registry, host+"/"+ev.Target.Repository, ev.Target.Tag, ev.Target.Digest,
		ev.Timestamp.Time, ev.Actor.Name, ev.ID)
	if err != nil {
		return err
	}
	res.Pushes = append(res.Pushes, push)
	return nil
}

// isBlob tells a layer or config blob from a manifest: by URL path when there is one, else by media type.
func isBlob(mediaType, rawURL string) bool {
	switch {
	case strings.Contains(rawURL, "/blobs/"):
		return true
	case strings.Contains(rawURL, "/manifests/"):
		return false
	}
	mt := strings.ToLower(mediaType)
	if mt == "" {
		return false
	}
	return !strings.Contains(mt, "manifest") && !strings.Contains(mt, "image.index")
}

// Harbor: {"type": "PUSH_ARTIFACT", "occur_at", "operator", "event_data": {"resources": [...]}}. An
// untagged push puts the digest into tag.
func parseHarbor(body []byte) (Result, error) {
	res := Result{Registry: Harbor}
	var p struct {
		Type      string   `json:"type"`
		OccurAt   flexTime `json:"occur_at"`
		Operator  string   `json:"operator"`
		EventData struct {
			Resources []struct {
				Digest      string `json:"digest"`
				Tag         string `json:"tag"`
				ResourceURL string `json:"resource_url"`
			} `json:"resources"`
		} `json:"event_data"`
	}
	if err := decode(Harbor, body, &p); err != nil {
		return res, err
	}
	switch strings.ToUpper(p.Type) {
	case "PUSH_ARTIFACT", "PUSHIMAGE":
	case "PULL_ARTIFACT", "PULLIMAGE":
		res.ignore(ReasonPull)
		return res, nil
	case "DELETE_ARTIFACT", "DELETEIMAGE":
		res.ignore(ReasonDelete)
		return res, nil
	default:
		res.ignore("harbor " + p.Type + " event")
		return res, nil
	}
	if len(p.EventData.Resources) == 0 {
		return res, unreadable("harbor push without event_data.resources")
	}
	for _, r := range p.EventData.Resources {
		name, urlTag, urlDigest := splitRef(r.ResourceURL)
		if name == "" || !domainLike(firstSegment(name)) {
			return res, unreadable("harbor resource_url %q does not name host/project/repository", r.ResourceURL)
		}
		tag, digest := r.Tag, r.Digest
		if tag == "" {
			tag = urlTag
		}
		if digest == "" {
			digest = urlDigest
		}
		if tag == "" || looksLikeDigest(tag) {
			res.ignore(ReasonUntagged)
			continue
		}
		push, err := newPush(Harbor, name, tag, digest, p.OccurAt.Time, p.Operator, "")
		if err != nil {
			return res, err
		}
		res.Pushes = append(res.Pushes, push)
	}
	return res, nil
}

// Quay: {"docker_url": "quay.io/ns/repo", "updated_tags": [...]}: one push per tag, no digest, no id.
func parseQuay(body []byte) (Result, error) {
	res := Result{Registry: Quay}
	var p struct {
		Repository  string   `json:"repository"`
		DockerURL   string   `json:"docker_url"`
		UpdatedTags []string `json:"updated_tags"`
		BuildID     string   `json:"build_id"`
	}
	if err := decode(Quay, body, &p); err != nil {
		return res, err
	}
	if p.BuildID != "" {
		res.ignore("quay build event")
		return res, nil
	}
	repo := p.DockerURL
	if repo == "" && p.Repository != "" {
		repo = "quay.io/" + p.Repository
	}
	if repo == "" {
		return res, unreadable("quay payload without docker_url or repository")
	}
	if len(p.UpdatedTags) == 0 {
		res.ignore(ReasonNoTags)
		return res, nil
	}
	for _, tag := range p.UpdatedTags {
		push, err := newPush(Quay, repo, tag, "", time.Time{}, "", "")
		if err != nil {
			return res, err
		}
		res.Pushes = append(res.Pushes, push)
	}
	return res, nil
}

// ECR through EventBridge: detail-type "ECR Image Action", detail.action-type PUSH. The registry host
// is <account>.dkr.ecr.<region>.amazonaws.com.
func parseECR(body []byte) (Result, error) {
	res := Result{Registry: ECR}
	var p struct {
		ID         string   `json:"id"`
		DetailType string   `json:"detail-type"`
		Source     string   `json:"source"`
		Account    string   `json:"account"`
		Time       flexTime `json:"time"`
		Region     string   `json:"region"`
		Detail     struct {
			Result         string `json:"result"`
			RepositoryName string `json:"repository-name"`
			ImageDigest    string `json:"image-digest"`
			ActionType     string `json:"action-type"`
			ImageTag       string `json:"image-tag"`
		} `json:"detail"`
	}
	if err := decode(ECR, body, &p); err != nil {
		return res, err
	}
	if p.DetailType != "ECR Image Action" {
		res.ignore("ecr " + p.DetailType + " event")
		return res, nil
	}
	switch strings.ToUpper(p.Detail.ActionType) {
	case "PUSH":
	case "DELETE":
		res.ignore(ReasonDelete)
		return res, nil
	default:
		res.ignore("ecr " + p.Detail.ActionType + " action")
		return res, nil
	}
	if r := strings.ToUpper(p.Detail.Result); r != "" && r != "SUCCESS" {
		res.ignore(ReasonFailed)
		return res, nil
	}
	if p.Account == "" || p.Region == "" || p.Detail.RepositoryName == "" {
		return res, unreadable("ecr event without account, region or repository-name")
	}
	if p.Detail.ImageTag == "" {
		res.ignore(ReasonUntagged)
		return res, nil
	}
	host := p.Account + ".dkr.ecr." + p.Region + ".amazonaws.com"
	push, err := newPush(ECR, host+"/"+p.Detail.RepositoryName, p.Detail.ImageTag, p.Detail.ImageDigest,
		p.Time.Time, "", p.ID)
	if err != nil {
		return res, err
	}
	res.Pushes = append(res.Pushes, push)
	return res, nil
}

// Pub/Sub push envelope: {"message": {"data": base64, "messageId", "publishTime"}, "subscription"}.
func parsePubSub(body []byte) (Result, error) {
	res := Result{Registry: GAR}
	var env struct {
		Message struct {
			Data        string   `json:"data"`
			MessageID   string   `json:"messageId"`
			MessageID2  string   `json:"message_id"`
			PublishTime flexTime `json:"publishTime"`
		} `json:"message"`
	}
	if err := decode(GAR, body, &env); err != nil {
		return res, err
	}
	data, err := decodeBase64(env.Message.Data)
	if err != nil {
		return res, unreadable("pub/sub message data is not base64")
	}
	id := env.Message.MessageID
	if id == "" {
		id = env.Message.MessageID2
	}
	return parseGARData(data, id, env.Message.PublishTime.Time)
}

func decodeBase64(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		var b []byte
		if b, err = enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, err
}

// GAR data: {"action": "INSERT"|"DELETE", "digest": "<repo>@sha256:...", "tag": "<repo>:<tag>"}.
func parseGARData(data []byte, messageID string, publishedAt time.Time) (Result, error) {
	res := Result{Registry: GAR}
	var p struct {
		Action string `json:"action"`
		Digest string `json:"digest"`
		Tag    string `json:"tag"`
	}
	if err := json.Unmarshal(data, &p); err != nil {
		return res, unreadable("gar data is not a JSON object: %v", err)
	}
	switch strings.ToUpper(p.Action) {
	case "INSERT":
	case "DELETE":
		res.ignore(ReasonDelete)
		return res, nil
	default:
		if p.Action == "" && p.Tag == "" && p.Digest == "" {
			return res, unreadable("pub/sub message holds no artifact registry notification")
		}
		res.ignore("gar " + p.Action + " event")
		return res, nil
	}
	if p.Tag == "" {
		res.ignore(ReasonUntagged)
		return res, nil
	}
	name, tag, _ := splitRef(p.Tag)
	if tag == "" {
		return res, unreadable("gar tag %q carries no tag", p.Tag)
	}
	var digest string
	if p.Digest != "" {
		dname, _, d := splitRef(p.Digest)
		if d == "" || !strings.EqualFold(dname, name) {
			return res, unreadable("gar digest %q does not name the digest of %s", p.Digest, name)
		}
		digest = d
	}
	push, err := newPush(GAR, name, tag, digest, publishedAt, "", messageID)
	if err != nil {
		return res, err
	}
	res.Pushes = append(res.Pushes, push)
	return res, nil
}
