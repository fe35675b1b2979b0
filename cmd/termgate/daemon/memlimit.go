package daemon

import (
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
)

// memoryLimitEnv carries the container's memory limit in bytes, set by the
// manifests from the downward API (resourceFieldRef limits.memory).
const memoryLimitEnv = "MEMORY_LIMIT"

// SetMemoryLimit gives the Go garbage collector a soft limit of 90% of the
// container's memory limit, so a burst of allocation is collected before
// the kernel's OOM killer ends the process. GOMEMLIMIT, when set, wins. It
// returns the limit applied, or 0 when none was.
func SetMemoryLimit() (int64, error) {
	if _, ok := os.LookupEnv("GOMEMLIMIT"); ok {
		return debug.SetMemoryLimit(-1), nil
	}
	raw, ok := os.LookupEnv(memoryLimitEnv)
	if !ok || raw == "" {
		return 0, nil
	}
	limit, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || limit <= 0 {
		return 0, fmt.Errorf("%s=%q: want the container's memory limit in bytes", memoryLimitEnv, raw)
	}
	soft := limit / 10 * 9
	debug.SetMemoryLimit(soft)
	return soft, nil
}
