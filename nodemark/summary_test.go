package nodemark

import (
	"testing"
	"time"
)

func TestDrainSummaryReadsBackWhatWasWritten(t *testing.T) {
	want := DrainSummary{EndedAt: time.Date(2026, 1, 2, 3, 4, 5, 678_000_000, time.UTC), DurationMillis: 12345, Evicted: 9, Deleted: 2, Gone: 1, Remaining: 0, Kept: 3}
	got, err := ParseDrainSummary(want.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if !got.EndedAt.Equal(want.EndedAt) || got.DurationMillis != want.DurationMillis || got.Evicted != 9 || got.Deleted != 2 || got.Gone != 1 || got.Kept != 3 {
		t.Errorf("read back %+v, wrote %+v", got, want)
	}
	if _, err := ParseDrainSummary("{evicted"); err == nil {
		t.Error("a malformed summary parsed without error")
	}
}
