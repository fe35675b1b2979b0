package realnode_test

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"termgate.dev/termgate/test/cluster"
)

// TestDockerfileMatchesRecipe keeps the Dockerfile and `make image`
// (test/imagebuild) one recipe: the same build flags, the binary at the same
// path as the only file of the image, the same user and entrypoint. A user
// building with docker gets the image the tests ran.
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
	img, err := readOCIArchive(archive)
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
	if len(img.files) != 1 || img.files[0] != copyDst {
		t.Errorf("image files %v, Dockerfile copies the binary to %q: want that one file", img.files, copyDst)
	}
	if want := "USER " + img.config.User; !contains(final, want) {
		t.Errorf("Dockerfile's final stage lacks %q (the image's user)", want)
	}
	if img.config.User != "65532:65532" {
		t.Errorf("image user %q, want 65532:65532 (the manifests' runAsUser)", img.config.User)
	}
	ep, _ := json.Marshal(img.config.Entrypoint)
	if want := "ENTRYPOINT " + string(ep); !contains(final, strings.ReplaceAll(want, ",", ", ")) && !contains(final, want) {
		t.Errorf("Dockerfile's final stage lacks %q (the image's entrypoint)", want)
	}
	if img.os != "linux" || img.arch != "amd64" {
		t.Errorf("image platform %s/%s, want linux/amd64", img.os, img.arch)
	}
	// The same build: static, trimmed, stripped.
	for _, flag := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w", "./cmd/termgate"} {
		if !strings.Contains(string(df), flag) {
			t.Errorf("Dockerfile's go build lacks %q", flag)
		}
		if !strings.Contains(imageRule(string(mk)), flag) {
			t.Errorf("Makefile's image rule lacks %q", flag)
		}
	}
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
// comments and blank lines dropped.
func finalStage(df string) []string {
	var stage []string
	for _, l := range strings.Split(df, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
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
	files    []string
	os, arch string
	config   struct {
		User       string   `json:"User"`
		Entrypoint []string `json:"Entrypoint"`
	}
}

// readOCIArchive reads the one image of an OCI layout tar: its config and
// the paths its layers hold. Plain archive/tar and JSON, so no image library
// enters termgate's module.
func readOCIArchive(path string) (*ociImage, error) {
	blobs, err := readTar(path)
	if err != nil {
		return nil, err
	}
	var index struct {
		Manifests []struct{ Digest string } `json:"manifests"`
	}
	if err := json.Unmarshal(blobs["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		return nil, fmt.Errorf("index.json: want one manifest (%v)", err)
	}
	var manifest struct {
		Config struct{ Digest string }   `json:"config"`
		Layers []struct{ Digest string } `json:"layers"`
	}
	if err := json.Unmarshal(blob(blobs, index.Manifests[0].Digest), &manifest); err != nil {
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
	img := &ociImage{os: cfg.OS, arch: cfg.Architecture}
	if err := json.Unmarshal(cfg.Config, &img.config); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	for _, l := range manifest.Layers {
		files, err := layerFiles(blob(blobs, l.Digest))
		if err != nil {
			return nil, err
		}
		img.files = append(img.files, files...)
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
