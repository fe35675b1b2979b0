package gcefake

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxTimeout bounds timeout_sec so that the duration cannot overflow.
const maxTimeout = 24 * time.Hour

// target is a parsed metadata path: a leaf key ("instance/preempted") or a
// directory ("instance/", "" for the root).
type target struct {
	key string
	dir bool
}

// query holds the protocol parameters a metadata request may carry.
type query struct {
	wait      bool
	lastETag  string
	timeout   time.Duration
	json      bool
	jsonSet   bool // alt was given explicitly
	recursive bool
}

// parsePath turns the part of a URL path after /computeMetadata/v1/ into a
// target. A trailing slash asks for a directory; empty, "." and ".."
// segments are refused so that no two spellings name the same key.
func parsePath(p string) (target, error) {
	if p == "" {
		return target{dir: true}, nil
	}
	dir := strings.HasSuffix(p, "/")
	key := strings.TrimSuffix(p, "/")
	if err := validKey(key); err != nil {
		return target{}, err
	}
	return target{key: key, dir: dir}, nil
}

// validKey reports whether key is a slash-separated list of plain names.
func validKey(key string) error {
	if key == "" {
		return errors.New("empty key")
	}
	for seg := range strings.SplitSeq(key, "/") {
		switch seg {
		case "", ".", "..":
			return fmt.Errorf("key %q has an empty, . or .. segment", key)
		}
		if strings.ContainsFunc(seg, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return fmt.Errorf("key %q has a control character", key)
		}
	}
	return nil
}

// parseQuery reads the metadata protocol parameters. Unknown parameters are
// ignored, as the real server does; malformed known ones are errors (400).
func parseQuery(v url.Values) (query, error) {
	var q query
	var err error
	if q.wait, err = parseBool(v, "wait_for_change"); err != nil {
		return query{}, err
	}
	if q.recursive, err = parseBool(v, "recursive"); err != nil {
		return query{}, err
	}
	q.lastETag = v.Get("last_etag")
	if s := v.Get("timeout_sec"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > int(maxTimeout/time.Second) { // compare before multiplying: no overflow
			return query{}, fmt.Errorf("timeout_sec %q is not a number of seconds in [0, %d]", s, int(maxTimeout.Seconds()))
		}
		q.timeout = time.Duration(n) * time.Second
	}
	switch alt := v.Get("alt"); alt {
	case "":
	case "json":
		q.json, q.jsonSet = true, true
	case "text":
		q.jsonSet = true
	default:
		return query{}, fmt.Errorf("alt %q is neither json nor text", alt)
	}
	return q, nil
}

func parseBool(v url.Values, name string) (bool, error) {
	switch s := v.Get(name); strings.ToLower(s) {
	case "", "false":
		return false, nil
	case "true":
		return true, nil
	default:
		return false, fmt.Errorf("%s %q is neither true nor false", name, s)
	}
}
