// Command imagebuild writes container images as OCI archives without a
// container engine or a registry: an empty base plus one layer holding one
// static binary. It builds the image users run (`make image`: one OCI image
// index for linux/amd64 and linux/arm64) and the real node's own images
// (`make binaries`, linux/amd64 only): the pause image and the test workload.
//
//	imagebuild termgate -binary linux/amd64=bin/termgate-linux-amd64 -binary linux/arm64=bin/termgate-linux-arm64 \
//		-version v1.2.3 -revision abc123 -source https://github.com/termgate/termgate \
//		-ref termgate.local/termgate:dev -o bin/termgate-image.tar
//	imagebuild testimages -o bin/realnode
//
// It is a module of its own so that go-containerregistry never enters
// termgate's go.mod.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The recipe of termgate's image. The Dockerfile's final stage must say the
// same; TestDockerfileMatchesRecipe in test/e2e/realnode checks it against
// the archive this writes.
const (
	termgatePath = "/termgate"
	termgateUser = "65532:65532"
)

// The OCI label keys of termgate's image config (and of its index's
// annotations). The Dockerfile's final stage sets the same keys.
const (
	labelSource   = "org.opencontainers.image.source"
	labelRevision = "org.opencontainers.image.revision"
	labelVersion  = "org.opencontainers.image.version"
	labelTitle    = "org.opencontainers.image.title"
)

// testPlatform is the one platform of the real node's test images.
var testPlatform = v1.Platform{OS: "linux", Architecture: "amd64"}

// Test images get fixed references: the real node imports them and pods name
// them with imagePullPolicy: Never, so no registry is ever asked.
const (
	PauseRef      = "termgate.local/pause:1"
	TermRecordRef = "termgate.local/termrecord:1"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "termgate":
		err = buildTermgate(os.Args[2:])
	case "testimages":
		err = buildTestImages(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: imagebuild termgate -binary OS/ARCH=FILE... [-version V] [-revision R] [-source URL] -ref REF -o FILE.tar | imagebuild testimages -o DIR")
	os.Exit(2)
}

// binaryFlags is the repeatable -binary OS/ARCH=FILE flag, in the order
// given.
type binaryFlags []platformBinary

func (b *binaryFlags) String() string {
	var parts []string
	for _, pb := range *b {
		parts = append(parts, pb.platform.String()+"="+pb.binary)
	}
	return strings.Join(parts, " ")
}

func (b *binaryFlags) Set(v string) error {
	plat, file, ok := strings.Cut(v, "=")
	osName, arch, ok2 := strings.Cut(plat, "/")
	if !ok || !ok2 || osName == "" || arch == "" || file == "" {
		return fmt.Errorf("%q: want OS/ARCH=FILE, e.g. linux/arm64=bin/termgate-linux-arm64", v)
	}
	p := v1.Platform{OS: osName, Architecture: arch}
	for _, pb := range *b {
		if pb.platform.Equals(p) {
			return fmt.Errorf("%q: platform %s given twice", v, p)
		}
	}
	*b = append(*b, platformBinary{platform: p, binary: file})
	return nil
}

func buildTermgate(args []string) error {
	fs := flag.NewFlagSet("termgate", flag.ContinueOnError)
	var bins binaryFlags
	fs.Var(&bins, "binary", "OS/ARCH=FILE: static termgate binary (CGO_ENABLED=0) for that platform; repeat per platform")
	version := fs.String("version", "", "org.opencontainers.image.version label (omitted when empty)")
	revision := fs.String("revision", "", "org.opencontainers.image.revision label (omitted when empty)")
	source := fs.String("source", "", "org.opencontainers.image.source label (omitted when empty)")
	ref := fs.String("ref", "termgate.local/termgate:dev", "image reference recorded in the archive")
	out := fs.String("o", "", "OCI archive to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(bins) == 0 || *out == "" {
		return fmt.Errorf("termgate: -binary and -o are required")
	}
	return writeIndexArchive(*out, *ref, termgateSpec(*version, *revision, *source), bins)
}

// termgateSpec is termgate's image recipe, the labels given set.
func termgateSpec(version, revision, source string) spec {
	labels := map[string]string{labelTitle: "termgate"}
	for k, v := range map[string]string{labelVersion: version, labelRevision: revision, labelSource: source} {
		if v != "" {
			labels[k] = v
		}
	}
	return spec{
		path: termgatePath, user: termgateUser,
		entrypoint: []string{termgatePath}, labels: labels,
	}
}

// buildTestImages compiles the pause and termrecord programs of this module
// as static binaries and writes one archive for each into the directory.
func buildTestImages(args []string) error {
	fs := flag.NewFlagSet("testimages", flag.ContinueOnError)
	out := fs.String("o", "", "directory for pause.tar and termrecord.tar")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("testimages: -o is required")
	}
	tmp, err := os.MkdirTemp("", "imagebuild-")
	if err != nil {
		return fmt.Errorf("testimages: %w", err)
	}
	defer os.RemoveAll(tmp)
	for _, img := range []struct{ name, ref string }{
		{"pause", PauseRef},
		{"termrecord", TermRecordRef},
	} {
		bin := filepath.Join(tmp, img.name)
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./"+img.name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+testPlatform.OS, "GOARCH="+testPlatform.Architecture)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("testimages: build %s: %w", img.name, err)
		}
		path := "/" + img.name
		err := writeArchive(filepath.Join(*out, img.name+".tar"), img.ref, spec{
			binary: bin, path: path, entrypoint: []string{path},
		}, testPlatform)
		if err != nil {
			return err
		}
	}
	return nil
}
