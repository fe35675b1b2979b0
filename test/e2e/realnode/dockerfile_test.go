package realnode_test

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"termgate.dev/termgate/test/cluster"
)

// TestDockerfileMatchesRecipe keeps the Dockerfile and `make image`
// (test/imagebuild) one recipe: the same build flags, and for each of
// linux/amd64 and linux/arm64 the binary, built for that machine, at the
// same path as the only file of the image, the same user and entrypoint and
// the same OCI label keys. A user building with docker buildx gets the
// images the tests ran.
func TestDockerfileMatchesRecipe(t *testing.T) {
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(root, "bin", "termgate-image.tar")
	if _, err := os.Stat(archive); err != nil {
		if testing.Short() {
			t.Skipf("%s missing (run `make image`); skipped under -short", archive)
		}
		t.Fatalf("%s missing: run `make image` (make test does)", archive)
	}
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	final := finalStage(string(df))
	imgs, err := readOCIArchive(archive)
	if err != nil {
		t.Fatalf("read %s: %v", archive, err)
	}

	if !strings.HasPrefix(final[0], "FROM scratch") {
		t.Errorf("Dockerfile's final stage %q: want FROM scratch, as the recipe's empty base", final[0])
	}
	copyDst := ""
	for _, l := range final {
		if m := regexp.MustCompile(`^COPY --from=\S+ \S+ (\S+)$`).FindStringSubmatch(l); m != nil {
			copyDst = m[1]
		}
	}
	dfLabels := labelKeys(final)
	if len(dfLabels) == 0 {
		t.Errorf("Dockerfile's final stage sets no LABEL; want the image config's OCI labels")
	}

	machines := map[string]elf.Machine{"linux/amd64": elf.EM_X86_64, "linux/arm64": elf.EM_AARCH64}
	var platforms []string
	for _, img := range imgs {
		plat := img.os + "/" + img.arch
		platforms = append(platforms, plat)
		if img.descPlatform != plat {
			t.Errorf("%s: the index says %q for this image", plat, img.descPlatform)
		}
		var files []string
		for f := range img.files {
			files = append(files, f)
		}
		if len(files) != 1 || files[0] != copyDst {
			t.Errorf("%s: image files %v, Dockerfile copies the binary to %q: want that one file", plat, files, copyDst)
		}
		if want := "USER " + img.config.User; !contains(final, want) {
			t.Errorf("%s: Dockerfile's final stage lacks %q (the image's user)", plat, want)
		}
		if img.config.User != "65532:65532" {
			t.Errorf("%s: image user %q, want 65532:65532 (the manifests' runAsUser)", plat, img.config.User)
		}
		ep, _ := json.Marshal(img.config.Entrypoint)
		if want := "ENTRYPOINT " + string(ep); !contains(final, strings.ReplaceAll(want, ",", ", ")) && !contains(final, want) {
			t.Errorf("%s: Dockerfile's final stage lacks %q (the image's entrypoint)", plat, want)
		}
		if bin, ok := img.files[copyDst]; ok {
			if m, err := elfMachine(bin); err != nil {
				t.Errorf("%s: %s: %v", plat, copyDst, err)
			} else if want, known := machines[plat]; known && m != want {
				t.Errorf("%s: %s is built for %s, want %s", plat, copyDst, m, want)
			}
		}
		var cfgLabels []string
		for k := range img.config.Labels {
			cfgLabels = append(cfgLabels, k)
		}
		sort.Strings(cfgLabels)
		if !slices.Equal(cfgLabels, dfLabels) {
			t.Errorf("%s: image config labels %v, Dockerfile's final stage sets %v: want the same keys", plat, cfgLabels, dfLabels)
		}
	}
	sort.Strings(platforms)
	if want := []string{"linux/amd64", "linux/arm64"}; !slices.Equal(platforms, want) {
		t.Errorf("image platforms %v, want %v", platforms, want)
	}
	// The same build: static, trimmed, stripped, cross-compiled per target.
	for _, flag := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w", "./cmd/termgate"} {
		if !strings.Contains(string(df), flag) {
			t.Errorf("Dockerfile's go build lacks %q", flag)
		}
		if !strings.Contains(imageRule(string(mk)), flag) {
			t.Errorf("Makefile's image rule lacks %q", flag)
		}
	}
	for _, want := range []string{"FROM --platform=$BUILDPLATFORM ", "GOOS=$TARGETOS GOARCH=$TARGETARCH"} {
		if !strings.Contains(string(df), want) {
			t.Errorf("Dockerfile lacks %q: a buildx build for both platforms would emulate or build one binary twice", want)
		}
	}
}

// labelKeys returns the keys the LABEL instructions of a stage set, sorted.
func labelKeys(stage []string) []string {
	var keys []string
	for _, l := range stage {
		rest, ok := strings.CutPrefix(l, "LABEL ")
		if !ok {
			continue
		}
		for _, kv := range strings.Fields(rest) {
			if k, _, ok := strings.Cut(kv, "="); ok {
				keys = append(keys, strings.Trim(k, `"`))
			}
		}
	}
	sort.Strings(keys)
	return keys
}

// elfMachine returns the machine an ELF file is built for.
func elfMachine(b []byte) (elf.Machine, error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return 0, fmt.Errorf("not an ELF file: %w", err)
	}
	defer f.Close()
	return f.Machine, nil
}

func contains(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}

// finalStage returns the instructions of the Dockerfile's last stage,
// comments and blank lines dropped, continued lines joined.
func finalStage(df string) []string {
	var stage []string
	cont := ""
	for _, l := range strings.Split(df, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if more, ok := strings.CutSuffix(l, "\\"); ok {
			cont += strings.TrimSpace(more) + " "
			continue
		}
		l, cont = cont+l, ""
		if strings.HasPrefix(l, "FROM ") {
			stage = nil
		}
		stage = append(stage, l)
	}
	if len(stage) == 0 {
		return []string{""}
	}
	return stage
}

// imageRule returns the recipe lines of the Makefile's image target.
func imageRule(mk string) string {
	_, rest, ok := strings.Cut(mk, "\nimage:")
	if !ok {
		return ""
	}
	if i := strings.Index(rest, "\n\n"); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

type ociImage struct {
	descPlatform string            // the platform the index's descriptor names
	files        map[string][]byte // regular files of the layers by absolute path
	os, arch     string
	config       struct {
		User       string            `json:"User"`
		Entrypoint []string          `json:"Entrypoint"`
		Labels     map[string]string `json:"Labels"`
	}
}

type ociDescriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Platform  *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
	} `json:"platform"`
}

const (
	ociIndexType    = "application/vnd.oci.image.index.v1+json"
	ociManifestType = "application/vnd.oci.image.manifest.v1+json"
)

// readOCIArchive reads the images of an OCI layout tar whose index.json
// names one image index: each platform's config and the files its layers
// hold. Plain archive/tar and JSON, so no image library enters termgate's
// module.
func readOCIArchive(path string) ([]*ociImage, error) {
	blobs, err := readTar(path)
	if err != nil {
		return nil, err
	}
	var top struct {
		Manifests []ociDescriptor `json:"manifests"`
	}
	if err := json.Unmarshal(blobs["index.json"], &top); err != nil {
		return nil, fmt.Errorf("index.json: %w", err)
	}
	if len(top.Manifests) != 1 || top.Manifests[0].MediaType != ociIndexType {
		return nil, fmt.Errorf("index.json: %d entries %v, want one %s", len(top.Manifests), top.Manifests, ociIndexType)
	}
	var index struct {
		MediaType string          `json:"mediaType"`
		Manifests []ociDescriptor `json:"manifests"`
	}
	if err := json.Unmarshal(blob(blobs, top.Manifests[0].Digest), &index); err != nil {
		return nil, fmt.Errorf("image index %s: %w", top.Manifests[0].Digest, err)
	}
	var imgs []*ociImage
	for _, d := range index.Manifests {
		if d.MediaType != ociManifestType || d.Platform == nil {
			return nil, fmt.Errorf("image index: entry %s is a %s with platform %v, want a %s with one",
				d.Digest, d.MediaType, d.Platform, ociManifestType)
		}
		img, err := readOCIImage(blobs, d.Digest)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", d.Digest, err)
		}
		img.descPlatform = d.Platform.OS + "/" + d.Platform.Architecture
		imgs = append(imgs, img)
	}
	return imgs, nil
}

// readOCIImage reads the config and the layers' files of one image manifest.
func readOCIImage(blobs map[string][]byte, digest string) (*ociImage, error) {
	var manifest struct {
		Config struct{ Digest string }   `json:"config"`
		Layers []struct{ Digest string } `json:"layers"`
	}
	if err := json.Unmarshal(blob(blobs, digest), &manifest); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	var cfg struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Config       json.RawMessage
	}
	if err := json.Unmarshal(blob(blobs, manifest.Config.Digest), &cfg); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	img := &ociImage{os: cfg.OS, arch: cfg.Architecture, files: map[string][]byte{}}
	if err := json.Unmarshal(cfg.Config, &img.config); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	for _, l := range manifest.Layers {
		if err := layerContents(blob(blobs, l.Digest), img.files); err != nil {
			return nil, err
		}
	}
	return img, nil
}

func blob(blobs map[string][]byte, digest string) []byte {
	return blobs["blobs/"+strings.Replace(digest, ":", "/", 1)]
}

func readTar(path string) (map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, err
			}
			out[strings.TrimPrefix(h.Name, "./")] = b
		}
	}
}
