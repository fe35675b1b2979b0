package nodemark

import (
	"encoding/json"
	"fmt"
	"time"
)

// DrainSummary is what a finished drain reports in EventAnnotationDrainSummary.
type DrainSummary struct {
	// EndedAt is when the drain ended by the agent's clock.
	EndedAt time.Time `json:"endedAt"`
	// DurationMillis is how long the drain ran (this run, after a restart).
	DurationMillis int64 `json:"durationMillis"`
	// Evicted pods were taken by the Eviction API; Deleted were deleted at a
	// cut-off with their grace clamped to the deadline; Gone had left before
	// the request landed.
	Evicted int `json:"evicted"`
	Deleted int `json:"deleted"`
	Gone    int `json:"gone"`
	// Remaining pods the policy evicts were still on the node at the end.
	Remaining int `json:"remaining"`
	// Kept pods are left on the node by the policy.
	Kept int `json:"kept"`
}

// Encode renders the summary as the annotation's value.
func (s DrainSummary) Encode() string {
	b, _ := json.Marshal(s) // plain fields: cannot fail
	return string(b)
}

// ParseDrainSummary reads EventAnnotationDrainSummary's value.
func ParseDrainSummary(v string) (DrainSummary, error) {
	var s DrainSummary
	if err := json.Unmarshal([]byte(v), &s); err != nil {
		return DrainSummary{}, fmt.Errorf("annotation %s: %w", EventAnnotationDrainSummary, err)
	}
	return s, nil
}
