// Command imagebuild writes container images as OCI archives without a
// container engine or a registry: an empty base plus one layer holding one
// static binary. It builds the image users run (`make image`) and the real
// node's own images (`make binaries`): the pause image and the test workload.
//
//	imagebuild termgate -binary bin/termgate-linux-amd64 -ref termgate.local/termgate:dev -o bin/termgate-image.tar
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
)

// The recipe of termgate's image. The Dockerfile's final stage must say the
// same; TestDockerfileMatchesRecipe in test/e2e/realnode checks it against
// the archive this writes.
const (
	termgatePath = "/termgate"
	termgateUser = "65532:65532"
)

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
	fmt.Fprintln(os.Stderr, "usage: imagebuild termgate -binary FILE -ref REF -o FILE.tar | imagebuild testimages -o DIR")
	os.Exit(2)
}

func buildTermgate(args []string) error {
	fs := flag.NewFlagSet("termgate", flag.ContinueOnError)
	binary := fs.String("binary", "", "static linux/amd64 termgate binary (CGO_ENABLED=0)")
	ref := fs.String("ref", "termgate.local/termgate:dev", "image reference recorded in the archive")
	out := fs.String("o", "", "OCI archive to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *binary == "" || *out == "" {
		return fmt.Errorf("termgate: -binary and -o are required")
	}
	return writeArchive(*out, *ref, spec{
		binary: *binary, path: termgatePath, user: termgateUser,
		entrypoint: []string{termgatePath},
	})
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
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("testimages: build %s: %w", img.name, err)
		}
		path := "/" + img.name
		err := writeArchive(filepath.Join(*out, img.name+".tar"), img.ref, spec{
			binary: bin, path: path, entrypoint: []string{path},
		})
		if err != nil {
			return err
		}
	}
	return nil
}
