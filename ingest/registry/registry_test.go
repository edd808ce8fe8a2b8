package registry

import (
	"encoding/base64"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const fixtureDir = "testdata/webhooks"

const (
	digestA = "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4"
	digestB = "sha256:fea8895f450959fa676bcc1df0611ea93823a735a01205fd8622846041d0c7cf"
)

// want is the expected outcome of one delivery.
type want struct {
	registry string
	pushes   []wantPush
	ignored  []string
	err      bool
}

type wantPush struct {
	repository, familiar, tag, digest, dedupe, pusher, dropped string
	pushedAt                                                   time.Time
}

func headers(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

func check(t *testing.T, got Result, err error, w want) {
	t.Helper()
	if w.err {
		require.Error(t, err)
		require.ErrorIs(t, err, ErrUnreadable)
		return
	}
	require.NoError(t, err)
	require.Equal(t, w.registry, got.Registry)
	require.Equal(t, w.ignored, got.Ignored, "ignored reasons")
	require.Len(t, got.Pushes, len(w.pushes), "pushes: %+v", got.Pushes)
	for i, wp := range w.pushes {
		p := got.Pushes[i]
		require.Equal(t, w.registry, p.Registry)
		require.Equal(t, wp.repository, p.Ref.Repository, "repository")
		require.Equal(t, wp.familiar, p.Ref.Familiar, "familiar")
		require.Equal(t, wp.tag, p.Ref.Tag, "tag")
		require.Equal(t, wp.digest, p.Ref.Digest, "digest")
		require.Equal(t, wp.dedupe, p.DedupeKey, "dedupe key")
		require.Equal(t, wp.pusher, p.Pusher, "pusher")
		require.Equal(t, wp.dropped, p.DroppedDigest, "dropped digest")
		require.True(t, wp.pushedAt.Equal(p.PushedAt), "pushed at: want %s got %s", wp.pushedAt, p.PushedAt)
	}
}

// TestFixtures covers every vendor sample in testdata/webhooks; a new file without an entry
// fails the test.
func TestFixtures(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		h http.Header
		w want
	}{
		"acr.json": {w: want{registry: ACR, pushes: []wantPush{{
			repository: "myregistry.azurecr.io/hello-world", familiar: "myregistry.azurecr.io/hello-world", tag: "v1",
			dedupe:   "acr:cb8c3971-9adc-488b-xxxx-43cbb4974ff5",
			dropped:  "sha256:xxxxd5c8786bb9e621a45ece0dbxxxx1cdc624ad20da9fe62e9d25490f33xxxx",
			pushedAt: time.Date(2023, 11, 17, 16, 52, 1, 343145347, time.UTC),
		}}}},
		// One manifest pushed by digest (no target.tag) and two layer blobs: nothing to roll out.
		"distribution.json": {
			h: headers("Content-Type", "application/vnd.docker.distribution.events.v1+json"),
			w: want{registry: Distribution, ignored: []string{ReasonUntagged, ReasonBlob, ReasonBlob}},
		},
		"dockerhub.json": {w: want{registry: DockerHub, pushes: []wantPush{{
			repository: "docker.io/svendowideit/testhook", familiar: "svendowideit/testhook", tag: "latest",
			dedupe: "push:docker.io/svendowideit/testhook:latest@#2014-12-03T00:22:41Z", pusher: "trustedbuilder",
			pushedAt: time.Unix(1417566161, 0),
		}}}},
		"ecr-eventbridge.json": {w: want{registry: ECR, pushes: []wantPush{{
			repository: "123456789012.dkr.ecr.us-west-2.amazonaws.com/my-repository-name",
			familiar:   "123456789012.dkr.ecr.us-west-2.amazonaws.com/my-repository-name", tag: "latest",
			dedupe:   "ecr:13cde686-328b-6117-af20-0e5566167482",
			dropped:  "sha256:7f5b2640fe6fb4f46592dfd3410c4a79dac4f89e4782432e0378abcd1234", // 60 hex digits in the sample
			pushedAt: time.Date(2019, 11, 16, 1, 54, 34, 0, time.UTC),
		}}}},
		"gar-pubsub-delete.json": {w: want{registry: GAR, ignored: []string{ReasonDelete}}},
		"gar-pubsub.json": {w: want{registry: GAR, pushes: []wantPush{{
			repository: "us-west1-docker.pkg.dev/my-project/my-repo/hello-world",
			familiar:   "us-west1-docker.pkg.dev/my-project/my-repo/hello-world", tag: "1.1",
			dedupe:  "push:us-west1-docker.pkg.dev/my-project/my-repo/hello-world:1.1@sha256:6ec128e26cd5...",
			dropped: "sha256:6ec128e26cd5...",
		}}}},
		// Synthetic octokit sample: empty tag (package_url ends in ':'), so it is an untagged version.
		"ghcr-registry_package-published.octokit-example.json": {
			h: headers("X-GitHub-Event", "registry_package", "X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
			w: want{registry: GitHub, ignored: []string{ReasonUntagged}},
		},
		// Digest-only replication push: Harbor puts the digest into tag.
		"harbor.json": {w: want{registry: Harbor, ignored: []string{ReasonUntagged}}},
		"quay.json": {w: want{registry: Quay, pushes: []wantPush{{
			repository: "quay.io/dgangaia/test", familiar: "quay.io/dgangaia/test", tag: "latest",
			dedupe: "push:quay.io/dgangaia/test:latest@",
		}}}},
	}
	files, err := filepath.Glob(filepath.Join(fixtureDir, "*.json"))
	require.NoError(t, err)
	require.NotEmpty(t, files, "no fixtures found in %s", fixtureDir)
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, ok := cases[name]
			require.True(t, ok, "fixture %s has no expected result in this table", name)
			body, err := os.ReadFile(f)
			require.NoError(t, err)
			got, err := Parse(body, c.h)
			check(t, got, err, c.w)
			// Detection does not depend on the headers, except GitHub's delivery id.
			if name != "ghcr-registry_package-published.octokit-example.json" {
				got, err = Parse(body, nil)
				check(t, got, err, c.w)
			}
		})
	}
}

func TestEdgeCases(t *testing.T) {
	t.Parallel()
	pubsub := func(data, id string) string {
		return `{"message":{"data":"` + base64.StdEncoding.EncodeToString([]byte(data)) + `","messageId":"` + id +
			`","publishTime":"2024-05-01T10:00:00.123Z","attributes":{}},"subscription":"projects/p/subscriptions/s"}`
	}
	cases := []struct {
		name string
		body string
		h    http.Header
		w    want
	}{
		{
			name: "ghcr package event, uppercase owner, tag and digest",
			h:    headers("X-GitHub-Event", "package", "X-GitHub-Delivery", "d-1"),
			body: `{"action":"published","package":{"name":"App","namespace":"AcmeCorp","package_type":"CONTAINER",
				"owner":{"login":"AcmeCorp"},"package_version":{"package_url":"ghcr.io/AcmeCorp/App:1.1",
				"updated_at":"2024-05-01T10:00:00Z",
				"container_metadata":{"tag":{"name":"1.1","digest":"` + digestA + `"}}}},"sender":{"login":"ci-bot"}}`,
			w: want{registry: GitHub, pushes: []wantPush{{repository: "ghcr.io/acmecorp/app", familiar: "ghcr.io/acmecorp/app",
				tag: "1.1", digest: digestA, dedupe: "github:d-1", pusher: "ci-bot",
				pushedAt: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)}}},
		},
		{
			name: "ghcr nested name without package_url and without delivery header",
			h:    headers("X-GitHub-Event", "package"),
			body: `{"action":"updated","package":{"name":"team%2Fapp","package_type":"container","owner":{"login":"Org"},
				"package_version":{"container_metadata":{"tag":{"name":"v2","digest":"` + digestA + `"}}}}}`,
			w: want{registry: GitHub, pushes: []wantPush{{repository: "ghcr.io/org/team/app", familiar: "ghcr.io/org/team/app",
				tag: "v2", digest: digestA, dedupe: "push:ghcr.io/org/team/app:v2@" + digestA}}},
		},
		{
			name: "ghcr multi-arch child (untagged version)",
			h:    headers("X-GitHub-Event", "package", "X-GitHub-Delivery", "d-2"),
			body: `{"action":"published","package":{"name":"app","package_type":"CONTAINER","owner":{"login":"o"},
				"package_version":{"package_url":"ghcr.io/o/app:","container_metadata":{"tag":{"name":"","digest":"` + digestA + `"}}}}}`,
			w: want{registry: GitHub, ignored: []string{ReasonUntagged}},
		},
		{
			name: "github npm package",
			h:    headers("X-GitHub-Event", "package"),
			body: `{"action":"published","package":{"name":"lib","package_type":"npm","ecosystem":"npm","owner":{"login":"o"}}}`,
			w:    want{registry: GitHub, ignored: []string{ReasonNotContainer}},
		},
		{
			name: "github ping",
			h:    headers("X-GitHub-Event", "ping"),
			body: `{"zen":"Keep it logically awesome.","hook_id":1}`,
			w:    want{registry: GitHub, ignored: []string{ReasonPing}},
		},
		{
			name: "distribution v2 push by tag, host with port, nested path, plus pull and blob",
			h:    headers("Content-Type", "application/vnd.docker.distribution.events.v2+json"),
			body: `{"events":[
				{"id":"e-1","timestamp":"2024-05-01T10:00:00Z","action":"push","target":{"mediaType":"application/vnd.oci.image.index.v1+json",
				 "digest":"` + digestB + `","repository":"Group/Sub/App","tag":"2.0","url":"https://registry.local:5000/v2/group/sub/app/manifests/` + digestB + `"},
				 "request":{"host":"registry.local:5000"},"actor":{"name":"dev"}},
				{"id":"e-2","action":"pull","target":{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","repository":"group/sub/app","tag":"2.0"},"request":{"host":"registry.local:5000"}},
				{"id":"e-3","action":"push","target":{"mediaType":"application/octet-stream","digest":"` + digestA + `","repository":"group/sub/app",
				 "url":"https://registry.local:5000/v2/group/sub/app/blobs/` + digestA + `"},"request":{"host":"registry.local:5000"}}]}`,
			w: want{registry: Distribution, ignored: []string{ReasonPull, ReasonBlob}, pushes: []wantPush{{
				repository: "registry.local:5000/group/sub/app", familiar: "registry.local:5000/group/sub/app", tag: "2.0",
				digest: digestB, dedupe: "distribution:e-1", pusher: "dev", pushedAt: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)}}},
		},
		{
			name: "distribution localhost:5000 host taken from target.url",
			body: `{"events":[{"id":"e-9","action":"push","target":{"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
				"repository":"app","tag":"1.0","url":"http://localhost:5000/v2/app/manifests/1.0"},"request":{}}]}`,
			w: want{registry: Distribution, pushes: []wantPush{{repository: "localhost:5000/app", familiar: "localhost:5000/app",
				tag: "1.0", dedupe: "distribution:e-9"}}},
		},
		{
			name: "distribution pull event only",
			body: `{"events":[{"id":"p","action":"pull","target":{"repository":"app","tag":"1"},"request":{"host":"r.example"}}]}`,
			w:    want{registry: Distribution, ignored: []string{ReasonPull}},
		},
		{
			name: "distribution delete",
			body: `{"events":[{"id":"d","action":"delete","target":{"repository":"app","digest":"` + digestA + `"},"request":{"host":"r.example"}}]}`,
			w:    want{registry: Distribution, ignored: []string{ReasonDelete}},
		},
		{
			name: "harbor tagged push with digest",
			body: `{"type":"PUSH_ARTIFACT","occur_at":1680501893,"operator":"admin","event_data":{"resources":[
				{"digest":"` + digestA + `","tag":"3.19","resource_url":"harbor.example.com:8443/Library/Alpine:3.19"}],
				"repository":{"name":"alpine","namespace":"library","repo_full_name":"library/alpine"}}}`,
			w: want{registry: Harbor, pushes: []wantPush{{repository: "harbor.example.com:8443/library/alpine",
				familiar: "harbor.example.com:8443/library/alpine", tag: "3.19", digest: digestA, pusher: "admin",
				dedupe: "push:harbor.example.com:8443/library/alpine:3.19@" + digestA, pushedAt: time.Unix(1680501893, 0)}}},
		},
		{
			name: "harbor pull",
			body: `{"type":"PULL_ARTIFACT","occur_at":1,"event_data":{"resources":[{"tag":"1","resource_url":"h.example/p/a:1"}]}}`,
			w:    want{registry: Harbor, ignored: []string{ReasonPull}},
		},
		{
			name: "quay several tags are several pushes",
			body: `{"repository":"acme/app","namespace":"acme","docker_url":"quay.io/acme/app","updated_tags":["1.2","latest"]}`,
			w: want{registry: Quay, pushes: []wantPush{
				{repository: "quay.io/acme/app", familiar: "quay.io/acme/app", tag: "1.2", dedupe: "push:quay.io/acme/app:1.2@"},
				{repository: "quay.io/acme/app", familiar: "quay.io/acme/app", tag: "latest", dedupe: "push:quay.io/acme/app:latest@"},
			}},
		},
		{
			name: "ecr empty tag is an untagged child",
			body: `{"id":"x","detail-type":"ECR Image Action","source":"aws.ecr","account":"1","region":"eu-west-1",
				"detail":{"result":"SUCCESS","repository-name":"app","image-digest":"` + digestA + `","action-type":"PUSH","image-tag":""}}`,
			w: want{registry: ECR, ignored: []string{ReasonUntagged}},
		},
		{
			name: "ecr failed push",
			body: `{"id":"x","detail-type":"ECR Image Action","source":"aws.ecr","account":"1","region":"eu-west-1",
				"detail":{"result":"FAILURE","repository-name":"app","action-type":"PUSH","image-tag":"1"}}`,
			w: want{registry: ECR, ignored: []string{ReasonFailed}},
		},
		{
			name: "gar pub/sub push envelope",
			body: pubsub(`{"action":"INSERT","digest":"europe-docker.pkg.dev/p/r/app@`+digestA+`","tag":"europe-docker.pkg.dev/p/r/app:1.0"}`, "123456"),
			w: want{registry: GAR, pushes: []wantPush{{repository: "europe-docker.pkg.dev/p/r/app", familiar: "europe-docker.pkg.dev/p/r/app",
				tag: "1.0", digest: digestA, dedupe: "gar:123456", pushedAt: time.Date(2024, 5, 1, 10, 0, 0, 123e6, time.UTC)}}},
		},
		{
			name: "gar pub/sub envelope of a delete",
			body: pubsub(`{"action":"DELETE","tag":"europe-docker.pkg.dev/p/r/app:1.0"}`, "9"),
			w:    want{registry: GAR, ignored: []string{ReasonDelete}},
		},
		{
			name: "gar insert of an untagged child",
			body: `{"action":"INSERT","digest":"europe-docker.pkg.dev/p/r/app@` + digestA + `"}`,
			w:    want{registry: GAR, ignored: []string{ReasonUntagged}},
		},
		{
			name: "dockerhub official image",
			body: `{"push_data":{"pushed_at":1700000000,"pusher":"x","tag":"1.25"},"repository":{"repo_name":"library/Nginx"}}`,
			w: want{registry: DockerHub, pushes: []wantPush{{repository: "docker.io/library/nginx", familiar: "nginx", tag: "1.25",
				pusher: "x", dedupe: "push:docker.io/library/nginx:1.25@#2023-11-14T22:13:20Z", pushedAt: time.Unix(1700000000, 0)}}},
		},
		{name: "garbage", body: `not json at all`, w: want{err: true}},
		{name: "json array", body: `[1,2,3]`, w: want{err: true}},
		{name: "json null", body: `null`, w: want{err: true}},
		{name: "unknown object", body: `{"hello":"world"}`, w: want{err: true}},
		{name: "distribution content type without envelope", h: headers("Content-Type", "application/vnd.docker.distribution.events.v1+json"),
			body: `{"hello":"world"}`, w: want{err: true}},
		{name: "pub/sub data not base64", body: `{"message":{"data":"%%%","messageId":"1"},"subscription":"s"}`, w: want{err: true}},
		{name: "invalid tag", body: `{"push_data":{"tag":"bad tag!"},"repository":{"repo_name":"a/b"}}`, w: want{err: true}},
		{name: "invalid repository", body: `{"docker_url":"quay.io/UP per/x y","updated_tags":["1"]}`, w: want{err: true}},
		{name: "distribution without host", body: `{"events":[{"id":"1","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"a","tag":"1"}}]}`, w: want{err: true}},
		{name: "distribution wrong field types", body: `{"events":"nope"}`, w: want{err: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, err := Parse([]byte(c.body), c.h)
			check(t, got, err, c.w)
		})
	}
}

// The same push delivered again yields the same dedupe key; a different push does not.
func TestDedupeKeyIsStable(t *testing.T) {
	t.Parallel()
	body, err := os.ReadFile(filepath.Join(fixtureDir, "dockerhub.json"))
	require.NoError(t, err)
	a, err := Parse(body, nil)
	require.NoError(t, err)
	b, err := Parse(body, nil)
	require.NoError(t, err)
	require.Equal(t, a.Pushes[0].DedupeKey, b.Pushes[0].DedupeKey)
	c, err := Parse([]byte(strings.Replace(string(body), "1417566161", "1417566999", 1)), nil)
	require.NoError(t, err)
	require.NotEqual(t, a.Pushes[0].DedupeKey, c.Pushes[0].DedupeKey, "a later push of the same tag is a new push")
}

func TestIgnoredReason(t *testing.T) {
	t.Parallel()
	r := Result{Ignored: []string{ReasonUntagged, ReasonBlob, ReasonBlob}}
	require.Equal(t, "untagged (multi-arch child), layer blob", r.IgnoredReason())
}

func TestErrorsWrapSentinel(t *testing.T) {
	t.Parallel()
	_, err := Parse([]byte(`{`), nil)
	require.True(t, errors.Is(err, ErrUnreadable))
}

// FuzzParse asserts Parse never panics and that every push it returns is well formed.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(fixtureDir, "*.json"))
	for _, file := range files {
		body, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(body, "")
		f.Add(body, "package")
	}
	f.Add([]byte(`{"events":[{"action":"push","target":{"repository":"a","tag":"1"},"request":{"host":"h:1"}}]}`), "")
	f.Add([]byte(`{"message":{"data":"e30=","messageId":"1"},"subscription":"s"}`), "")
	f.Fuzz(func(t *testing.T, body []byte, event string) {
		res, err := Parse(body, headers("X-GitHub-Event", event))
		if err != nil {
			if !errors.Is(err, ErrUnreadable) {
				t.Fatalf("error does not wrap ErrUnreadable: %v", err)
			}
			return
		}
		for _, p := range res.Pushes {
			if p.Ref.Tag == "" || p.Ref.Repository == "" || p.DedupeKey == "" {
				t.Fatalf("malformed push %+v", p)
			}
		}
	})
}
