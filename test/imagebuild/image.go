package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// spec is everything an image built here holds: one executable file and the
// few config fields a runtime needs.
type spec struct {
	binary     string            // file on this machine
	path       string            // where it lands in the image
	user       string            // "" runs as the runtime's default (root)
	entrypoint []string          // the command
	labels     map[string]string // config labels; nil for none
}

// platformBinary is one platform of a multi-platform image and the binary
// built for it.
type platformBinary struct {
	platform v1.Platform
	binary   string
}

// elfMachines is the ELF machine a binary must be built for to run on each
// architecture an image here can target.
var elfMachines = map[string]elf.Machine{
	"amd64": elf.EM_X86_64,
	"arm64": elf.EM_AARCH64,
}

// epoch is every timestamp in the image, so the same binary always gives the
// same digest.
var epoch = time.Unix(0, 0).UTC()

// nameAnnotations names an image in index.json twice:
// org.opencontainers.image.ref.name for OCI tools and io.containerd.image.name
// for `ctr images import`, which otherwise imports it without a name.
func nameAnnotations(ref string) map[string]string {
	return map[string]string{
		"org.opencontainers.image.ref.name": ref,
		"io.containerd.image.name":          ref,
	}
}

// checkBinary refuses a file that is not a Linux ELF executable for the
// platform's architecture: an arm64 image holding an amd64 binary would
// build fine and only fail on the node with "exec format error".
func checkBinary(path string, p v1.Platform) error {
	want, ok := elfMachines[p.Architecture]
	if p.OS != "linux" || !ok {
		return fmt.Errorf("platform %s: not supported (want linux/amd64 or linux/arm64)", p)
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("platform %s: binary %s: not an ELF file: %w", p, path, err)
	}
	defer f.Close()
	if f.Machine != want {
		return fmt.Errorf("platform %s: binary %s is built for %s, want %s", p, path, f.Machine, want)
	}
	return nil
}

// writeArchive writes an OCI image layout holding one image for one platform
// as a tar file, the index.json entry carrying the platform and both names.
func writeArchive(out, ref string, s spec, p v1.Platform) error {
	if err := checkBinary(s.binary, p); err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	img, err := buildImage(s, p)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	return writeLayout(out, ref, func(l layout.Path) error {
		return l.AppendImage(img, layout.WithAnnotations(nameAnnotations(ref)), layout.WithPlatform(p))
	})
}

// writeIndexArchive writes an OCI image layout whose index.json has one
// entry: an OCI image index with one image per platform, each built from s
// with that platform's binary. The nested index carries s's labels as
// annotations; the entry naming it carries both names. Every binary is
// checked before anything is built.
func writeIndexArchive(out, ref string, s spec, bins []platformBinary) error {
	if len(bins) == 0 {
		return fmt.Errorf("image %s: no platform", ref)
	}
	for _, b := range bins {
		if err := checkBinary(b.binary, b.platform); err != nil {
			return fmt.Errorf("image %s: %w", ref, err)
		}
	}
	idx, err := buildIndex(s, bins)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	return writeLayout(out, ref, func(l layout.Path) error {
		return l.AppendIndex(idx, layout.WithAnnotations(nameAnnotations(ref)))
	})
}

// buildIndex builds an OCI image index of one image per platform.
func buildIndex(s spec, bins []platformBinary) (v1.ImageIndex, error) {
	adds := make([]mutate.IndexAddendum, 0, len(bins))
	for _, b := range bins {
		one := s
		one.binary = b.binary
		img, err := buildImage(one, b.platform)
		if err != nil {
			return nil, fmt.Errorf("platform %s: %w", b.platform, err)
		}
		p := b.platform
		adds = append(adds, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &p},
		})
	}
	idx := mutate.IndexMediaType(mutate.AppendManifests(empty.Index, adds...), types.OCIImageIndex)
	if len(s.labels) > 0 {
		idx = mutate.Annotations(idx, s.labels).(v1.ImageIndex)
	}
	return idx, nil
}

// writeLayout writes an OCI layout into a temporary directory through add
// and then tars it to out.
func writeLayout(out, ref string, add func(layout.Path) error) error {
	dir, err := os.MkdirTemp("", "imagebuild-layout-")
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("image %s: write layout: %w", ref, err)
	}
	if err := add(p); err != nil {
		return fmt.Errorf("image %s: write layout: %w", ref, err)
	}
	if err := tarDir(dir, out); err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	return nil
}

func buildImage(s spec, p v1.Platform) (v1.Image, error) {
	bin, err := os.ReadFile(s.binary)
	if err != nil {
		return nil, fmt.Errorf("read binary: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{
		Name: strings.TrimPrefix(s.path, "/"), Mode: 0o755, Size: int64(len(bin)),
		ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: epoch},
			CreatedBy: "imagebuild: " + s.path,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture, cfg.Variant = p.OS, p.Architecture, p.Variant
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.User = s.user
	cfg.Config.Entrypoint = s.entrypoint
	cfg.Config.WorkingDir = "/"
	if len(s.labels) > 0 {
		cfg.Config.Labels = map[string]string{}
		for k, v := range s.labels {
			cfg.Config.Labels[k] = v
		}
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return img, nil
}

// tarDir writes the files under dir into a tar file, paths relative to dir,
// fixed timestamps and owners, through a temporary file renamed into place
// so that an interrupted build never leaves half an archive behind.
func tarDir(dir, out string) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("archive: %w", err)
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name, hdr.ModTime = filepath.ToSlash(rel), epoch
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if d.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		src, err := os.Open(path)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("archive %s: %w", out, err)
	}
	if err := os.Rename(f.Name(), out); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	return nil
}
