package gcefake

import (
	"fmt"
	"time"
)

// FaultKind is a way for the fake to misbehave.
type FaultKind int

const (
	// FaultNone marks a request that no fault touched.
	FaultNone FaultKind = iota
	// Fault503 replies 503 Service Unavailable, as the real server does
	// during its own maintenance.
	Fault503
	// Fault429 replies 429 Too Many Requests.
	Fault429
	// FaultDelay holds the reply back for Fault.Delay, then serves normally.
	FaultDelay
	// FaultDrop closes the connection without any reply.
	FaultDrop
	// FaultGarbage replies 200 with GarbageBody and a fresh ETag.
	FaultGarbage
)

// GarbageBody is what a FaultGarbage reply carries: not UTF-8, not JSON.
const GarbageBody = "\x00\xff\xfegarbage{\"not\":json"

func (k FaultKind) String() string {
	switch k {
	case FaultNone:
		return "none"
	case Fault503:
		return "503"
	case Fault429:
		return "429"
	case FaultDelay:
		return "delay"
	case FaultDrop:
		return "drop"
	case FaultGarbage:
		return "garbage"
	}
	return fmt.Sprintf("FaultKind(%d)", int(k))
}

// Fault makes a server misbehave for some requests.
//
// A fault is taken by the requests that arrive while it is armed. A 503,
// 429, drop or garbage fault also breaks requests already hanging on the
// key (wait_for_change): they get the faulty reply at once. A delay fault
// only holds back requests that arrive after it.
type Fault struct {
	// Key is the path the fault applies to, as requested after
	// /computeMetadata/v1/ ("instance/preempted", "instance/" for the
	// directory). Empty means every request.
	Key string
	// Kind is what goes wrong.
	Kind FaultKind
	// Count is how many requests the fault takes; 0 means until cleared.
	Count int
	// Delay is how long a FaultDelay holds each reply.
	Delay time.Duration
}

func (f Fault) validate() error {
	if f.Kind <= FaultNone || f.Kind > FaultGarbage {
		return fmt.Errorf("unknown fault kind %v", f.Kind)
	}
	if f.Count < 0 {
		return fmt.Errorf("fault count %d is negative", f.Count)
	}
	if f.Kind == FaultDelay && f.Delay <= 0 {
		return fmt.Errorf("delay fault needs a positive delay, got %v", f.Delay)
	}
	return nil
}

// armedFault is a Fault with the number of requests it may still take
// (-1: unlimited).
type armedFault struct {
	Fault
	left int
}

// faults is the ordered list of armed faults of one server; Server guards
// it with its mutex.
type faults []*armedFault

// take returns the first armed fault for key and uses up one of its
// requests. A hanging request only takes faults that end a request.
func (fs *faults) take(key string, hanging bool) (Fault, bool) {
	for i, f := range *fs {
		if f.Key != "" && f.Key != key {
			continue
		}
		if hanging && f.Kind == FaultDelay {
			continue
		}
		if f.left > 0 {
			f.left--
			if f.left == 0 {
				*fs = append((*fs)[:i], (*fs)[i+1:]...)
			}
		}
		return f.Fault, true
	}
	return Fault{}, false
}

func (fs *faults) add(f Fault) {
	left := f.Count
	if left == 0 {
		left = -1
	}
	*fs = append(*fs, &armedFault{Fault: f, left: left})
}
