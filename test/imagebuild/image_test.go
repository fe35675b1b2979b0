package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// fakeELF writes a file that is only an ELF64 little-endian executable
// header for machine m, followed by a marker that makes each file's bytes
// distinct, and returns its path.
func fakeELF(t *testing.T, name string, m elf.Machine) string {
	t.Helper()
	var b bytes.Buffer
	b.Write([]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT), byte(elf.ELFOSABI_NONE)})
	b.Write(make([]byte, 8)) // rest of e_ident
	le := binary.LittleEndian
	hdr := struct {
		Type      uint16
		Machine   uint16
		Version   uint32
		Entry     uint64
		Phoff     uint64
		Shoff     uint64
		Flags     uint32
		Ehsize    uint16
		Phentsize uint16
		Phnum     uint16
		Shentsize uint16
		Shnum     uint16
		Shstrndx  uint16
	}{Type: uint16(elf.ET_EXEC), Machine: uint16(m), Version: uint32(elf.EV_CURRENT), Ehsize: 64}
	if err := binary.Write(&b, le, hdr); err != nil {
		t.Fatal(err)
	}
	b.WriteString("fake " + name)
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, b.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

var (
	amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}
	arm64 = v1.Platform{OS: "linux", Architecture: "arm64"}
)

func TestFakeELFReadsAsItsMachine(t *testing.T) {
	f, err := elf.Open(fakeELF(t, "x", elf.EM_AARCH64))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != elf.EM_AARCH64 {
		t.Fatalf("machine %s, want EM_AARCH64", f.Machine)
	}
}

func TestTermgateIndexHasBothPlatforms(t *testing.T) {
	bins := map[string]string{
		"amd64": fakeELF(t, "termgate-amd64", elf.EM_X86_64),
		"arm64": fakeELF(t, "termgate-arm64", elf.EM_AARCH64),
	}
	out := filepath.Join(t.TempDir(), "image.tar")
	const ref = "example.test/termgate:v1"
	err := buildTermgate([]string{
		"-binary", "linux/amd64=" + bins["amd64"], "-binary", "linux/arm64=" + bins["arm64"],
		"-version", "v1.2.3", "-revision", "0123abc", "-source", "https://example.test/termgate",
		"-ref", ref, "-o", out,
	})
	if err != nil {
		t.Fatal(err)
	}
	blobs := readTarFiles(t, out)
	wantLabels := map[string]string{
		"org.opencontainers.image.title":    "termgate",
		"org.opencontainers.image.version":  "v1.2.3",
		"org.opencontainers.image.revision": "0123abc",
		"org.opencontainers.image.source":   "https://example.test/termgate",
	}

	var top v1.IndexManifest
	decode(t, blobs["index.json"], &top)
	if len(top.Manifests) != 1 {
		t.Fatalf("index.json has %d entries, want 1 (the nested index)", len(top.Manifests))
	}
	entry := top.Manifests[0]
	if entry.MediaType != types.OCIImageIndex {
		t.Errorf("index.json entry media type %s, want %s", entry.MediaType, types.OCIImageIndex)
	}
	for _, k := range []string{"org.opencontainers.image.ref.name", "io.containerd.image.name"} {
		if entry.Annotations[k] != ref {
			t.Errorf("index.json entry annotation %s=%q, want %q", k, entry.Annotations[k], ref)
		}
	}

	var idx v1.IndexManifest
	decode(t, blob(t, blobs, entry.Digest), &idx)
	if idx.MediaType != types.OCIImageIndex {
		t.Errorf("nested index media type %s, want %s", idx.MediaType, types.OCIImageIndex)
	}
	if !reflect.DeepEqual(idx.Annotations, wantLabels) {
		t.Errorf("nested index annotations %v, want %v", idx.Annotations, wantLabels)
	}
	var platforms []string
	for _, d := range idx.Manifests {
		if d.Platform == nil {
			t.Errorf("manifest %s has no platform", d.Digest)
			continue
		}
		platforms = append(platforms, d.Platform.String())
		if d.MediaType != types.OCIManifestSchema1 {
			t.Errorf("%s: manifest media type %s, want %s", d.Platform, d.MediaType, types.OCIManifestSchema1)
		}
		var m v1.Manifest
		decode(t, blob(t, blobs, d.Digest), &m)
		var cfg v1.ConfigFile
		decode(t, blob(t, blobs, m.Config.Digest), &cfg)
		if cfg.OS != d.Platform.OS || cfg.Architecture != d.Platform.Architecture {
			t.Errorf("%s: config platform %s/%s", d.Platform, cfg.OS, cfg.Architecture)
		}
		if cfg.Config.User != "65532:65532" {
			t.Errorf("%s: user %q, want 65532:65532", d.Platform, cfg.Config.User)
		}
		if !reflect.DeepEqual(cfg.Config.Entrypoint, []string{"/termgate"}) {
			t.Errorf("%s: entrypoint %q, want [/termgate]", d.Platform, cfg.Config.Entrypoint)
		}
		if !reflect.DeepEqual(cfg.Config.Labels, wantLabels) {
			t.Errorf("%s: labels %v, want %v", d.Platform, cfg.Config.Labels, wantLabels)
		}
		if !cfg.Created.Time.Equal(epoch) {
			t.Errorf("%s: created %s, want %s", d.Platform, cfg.Created.Time, epoch)
		}
		if len(m.Layers) != 1 {
			t.Errorf("%s: %d layers, want 1", d.Platform, len(m.Layers))
			continue
		}
		files := layerContents(t, blob(t, blobs, m.Layers[0].Digest))
		want, err := os.ReadFile(bins[d.Platform.Architecture])
		if err != nil {
			t.Fatal(err)
		}
		if len(files) != 1 || !bytes.Equal(files["/termgate"], want) {
			names := make([]string, 0, len(files))
			for n := range files {
				names = append(names, n)
			}
			t.Errorf("%s: layer holds %v, want only /termgate with the %s binary's %d bytes",
				d.Platform, names, d.Platform.Architecture, len(want))
		}
	}
	sort.Strings(platforms)
	if !reflect.DeepEqual(platforms, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("nested index platforms %v, want [linux/amd64 linux/arm64]", platforms)
	}
}

func TestTermgateRefusesABinaryOfAnotherMachine(t *testing.T) {
	out := filepath.Join(t.TempDir(), "image.tar")
	amd := fakeELF(t, "termgate-amd64", elf.EM_X86_64)
	err := buildTermgate([]string{
		"-binary", "linux/amd64=" + amd, "-binary", "linux/arm64=" + amd, "-o", out,
	})
	if err == nil {
		t.Fatal("an amd64 binary given as linux/arm64 was accepted")
	}
	if !strings.Contains(err.Error(), "linux/arm64") || !strings.Contains(err.Error(), "EM_X86_64") {
		t.Errorf("error %q: want it to name the platform linux/arm64 and the binary's machine", err)
	}
	if _, serr := os.Stat(out); !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("%s written despite the refusal (stat: %v)", out, serr)
	}
}

func TestTermgateRefusesANonELFAndAnUnknownPlatform(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "termgate.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	arm := fakeELF(t, "termgate-arm64", elf.EM_AARCH64)
	for _, c := range []struct{ binary, want string }{
		{"linux/amd64=" + script, "not an ELF"},
		{"linux/riscv64=" + arm, "linux/riscv64"},
		{"linux/arm64", "OS/ARCH=FILE"},
	} {
		err := buildTermgate([]string{"-binary", c.binary, "-o", filepath.Join(dir, "image.tar")})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("-binary %s: error %v, want one saying %q", c.binary, err, c.want)
		}
	}
}

// TestSinglePlatformArchive is the test images' path: index.json names one
// linux/amd64 image directly.
func TestSinglePlatformArchive(t *testing.T) {
	out := filepath.Join(t.TempDir(), "pause.tar")
	bin := fakeELF(t, "pause", elf.EM_X86_64)
	if err := writeArchive(out, PauseRef, spec{binary: bin, path: "/pause", entrypoint: []string{"/pause"}}, testPlatform); err != nil {
		t.Fatal(err)
	}
	blobs := readTarFiles(t, out)
	var top v1.IndexManifest
	decode(t, blobs["index.json"], &top)
	if len(top.Manifests) != 1 {
		t.Fatalf("index.json has %d entries, want 1", len(top.Manifests))
	}
	d := top.Manifests[0]
	if d.MediaType != types.OCIManifestSchema1 || d.Platform == nil || d.Platform.String() != "linux/amd64" ||
		d.Annotations["io.containerd.image.name"] != PauseRef {
		t.Errorf("index.json entry %+v: want an OCI manifest for linux/amd64 named %s", d, PauseRef)
	}
	var m v1.Manifest
	decode(t, blob(t, blobs, d.Digest), &m)
	var cfg v1.ConfigFile
	decode(t, blob(t, blobs, m.Config.Digest), &cfg)
	if cfg.Architecture != "amd64" || cfg.Config.User != "" || len(cfg.Config.Labels) != 0 {
		t.Errorf("config arch %q user %q labels %v: want amd64, the default user, no labels",
			cfg.Architecture, cfg.Config.User, cfg.Config.Labels)
	}

	if err := writeArchive(out, PauseRef, spec{binary: fakeELF(t, "pause-arm", elf.EM_AARCH64), path: "/pause"}, testPlatform); err == nil {
		t.Error("an arm64 binary was accepted for a linux/amd64 test image")
	}
}

func readTarFiles(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("%s: %s: %v", path, h.Name, err)
			}
			out[h.Name] = b
		}
	}
}

func blob(t *testing.T, blobs map[string][]byte, h v1.Hash) []byte {
	t.Helper()
	b, ok := blobs["blobs/"+h.Algorithm+"/"+h.Hex]
	if !ok {
		t.Fatalf("blob %s missing from the archive", h)
	}
	return b
}

func decode(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %T: %v", v, err)
	}
}

// layerContents returns the regular files of a gzipped layer tar by absolute
// path, and fails on anything else in it.
func layerContents(t *testing.T, layer []byte) map[string][]byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		t.Fatalf("layer: %v", err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatalf("layer: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("layer: %s: %v", h.Name, err)
		}
		files["/"+h.Name] = b
	}
}
