package gcefake

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/http"
	"sort"
	"strings"
)

// entry is one leaf value. A deleted leaf stays as a tombstone (present
// false) so that its directory's revision still moves when it goes away.
type entry struct {
	value   string
	present bool
	rev     uint64
}

// store holds one instance's metadata as flat keys. It is not safe for
// concurrent use: Server guards it with its mutex.
type store struct {
	salt    uint64 // differs between servers so their etags never collide
	rev     uint64
	entries map[string]*entry
}

// reply is a rendered answer to a read: status, body and ETag.
type reply struct {
	status      int
	body        []byte
	etag        string
	contentType string
}

func newStore(salt uint64) *store {
	return &store{salt: salt, entries: make(map[string]*entry)}
}

// set stores value under key and reports whether anything changed. Setting
// the value a key already has is not a change: it keeps the ETag.
func (s *store) set(key, value string) (bool, error) {
	if err := validKey(key); err != nil {
		return false, err
	}
	if err := s.checkShape(key); err != nil {
		return false, err
	}
	e := s.entries[key]
	if e != nil && e.present && e.value == value {
		return false, nil
	}
	s.rev++
	s.entries[key] = &entry{value: value, present: true, rev: s.rev}
	return true, nil
}

// remove deletes key and reports whether it was present.
func (s *store) remove(key string) bool {
	e := s.entries[key]
	if e == nil || !e.present {
		return false
	}
	s.rev++
	*e = entry{rev: s.rev}
	return true
}

// checkShape refuses a key that would be both a leaf and a directory.
func (s *store) checkShape(key string) error {
	for k, e := range s.entries {
		if !e.present {
			continue
		}
		if strings.HasPrefix(k, key+"/") {
			return fmt.Errorf("key %q is a directory (it holds %q)", key, k)
		}
		if strings.HasPrefix(key, k+"/") {
			return fmt.Errorf("key %q lies under the value %q", key, k)
		}
	}
	return nil
}

// read renders t as the real server would: a leaf as text or JSON, a
// directory as a listing or (recursive or alt=json) as a JSON object.
func (s *store) read(t target, q query) reply {
	if e := s.entries[t.key]; !t.dir && e != nil && e.present {
		return s.readLeaf(t.key, e, q)
	}
	if t.dir && t.key != "" {
		if e := s.entries[t.key]; e != nil && e.present {
			return notFound() // a leaf asked for with a trailing slash
		}
	}
	prefix := dirPrefix(t.key)
	leaves, rev := s.under(prefix)
	if len(leaves) == 0 {
		return notFound()
	}
	r := reply{status: http.StatusOK, etag: s.etag(prefix, rev)}
	switch {
	case q.json || (q.recursive && !q.jsonSet):
		r.contentType, r.body = "application/json", jsonDir(leaves, prefix, q.recursive)
	case q.recursive:
		r.contentType, r.body = "application/text", textTree(leaves)
	default:
		r.contentType, r.body = "application/text", listing(leaves)
	}
	return r
}

func (s *store) readLeaf(key string, e *entry, q query) reply {
	r := reply{status: http.StatusOK, etag: s.etag(key, e.rev), contentType: "application/text", body: []byte(e.value)}
	if q.json {
		r.contentType, r.body = "application/json", leafJSON(key, e.value)
	}
	return r
}

// under returns the present leaves below prefix and the newest revision of
// any leaf, deleted or not, below it.
func (s *store) under(prefix string) (map[string]string, uint64) {
	leaves := make(map[string]string)
	var rev uint64
	for k, e := range s.entries {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		rev = max(rev, e.rev)
		if e.present {
			leaves[strings.TrimPrefix(k, prefix)] = e.value
		}
	}
	return leaves, rev
}

// etag derives an opaque tag from the path and its revision: any change
// below the path moves the revision and so the tag.
func (s *store) etag(path string, rev uint64) string {
	h := fnv.New64a()
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], s.salt)
	binary.BigEndian.PutUint64(b[8:], rev)
	h.Write(b[:])
	h.Write([]byte(path))
	return fmt.Sprintf("%016x", h.Sum64())
}

func notFound() reply {
	return reply{status: http.StatusNotFound, contentType: "text/plain; charset=utf-8", body: []byte("metadata key not found\n")}
}

func dirPrefix(key string) string {
	if key == "" {
		return ""
	}
	return key + "/"
}

// listing names the direct children of a directory, one a line, with a
// trailing slash on subdirectories.
func listing(leaves map[string]string) []byte {
	seen := make(map[string]bool)
	for rel := range leaves {
		name, _, isDir := strings.Cut(rel, "/")
		if isDir {
			name += "/"
		}
		seen[name] = true
	}
	return []byte(strings.Join(sortedKeys(seen), "\n") + "\n")
}

// textTree is the alt=text form of a recursive read: "path value" lines.
func textTree(leaves map[string]string) []byte {
	var b strings.Builder
	for _, rel := range sortedKeys(leaves) {
		fmt.Fprintf(&b, "%s %s\n", rel, leaves[rel])
	}
	return []byte(b.String())
}

// jsonDir builds the JSON object of a directory. Names are camelCased as
// the real server does (maintenance-event -> maintenanceEvent) except user
// attributes, whose names are data. Without recursive, subdirectories show
// as empty objects.
func jsonDir(leaves map[string]string, prefix string, recursive bool) []byte {
	root := make(map[string]any)
	for rel, value := range leaves {
		segs := strings.Split(rel, "/")
		if !recursive && len(segs) > 1 {
			if name := jsonName(prefix, segs[0]); root[name] == nil {
				root[name] = map[string]any{}
			}
			continue
		}
		insert(root, segs, prefix, value)
	}
	b, err := json.Marshal(root)
	if err != nil { // cannot happen: the tree holds only strings and valid raw JSON
		return []byte("{}")
	}
	return b
}

// insert places value at the path segs below node, whose own path is parent.
func insert(node map[string]any, segs []string, parent, value string) {
	name := jsonName(parent, segs[0])
	if len(segs) == 1 {
		node[name] = json.RawMessage(leafJSON(parent+segs[0], value))
		return
	}
	child, ok := node[name].(map[string]any)
	if !ok {
		child = make(map[string]any)
		node[name] = child
	}
	insert(child, segs[1:], parent+segs[0]+"/", value)
}

// leafJSON is a leaf in JSON form: keys that hold JSON (or numbers) are
// embedded as they are, everything else is a JSON string.
func leafJSON(key, value string) []byte {
	if holdsJSON(key) && json.Valid([]byte(value)) {
		return []byte(value)
	}
	b, _ := json.Marshal(value) // marshalling a string cannot fail
	return b
}

func holdsJSON(key string) bool {
	switch key {
	case KeyUpcomingMaintenance, KeyID, KeyNumericProjectID:
		return true
	}
	return false
}

// jsonName turns "on-host-maintenance" into "onHostMaintenance", leaving
// names under an attributes directory untouched.
func jsonName(parent, name string) string {
	if strings.HasSuffix(parent, "attributes/") {
		return name
	}
	parts := strings.Split(name, "-")
	for i := 1; i < len(parts); i++ {
		if parts[i] != "" {
			parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
		}
	}
	return strings.Join(parts, "")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
