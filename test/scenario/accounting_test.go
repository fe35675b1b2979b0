package scenario

import (
	"reflect"
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

func TestLostPods(t *testing.T) {
	tests := map[string]struct {
		departures []departure
		replaced   map[types.UID]int
		want       []string
	}{
		"nothing departed, nothing is lost": {},
		"every departed pod of a controller has a replacement Ready elsewhere": {
			departures: []departure{{"ns/web-a", "rs"}, {"ns/web-b", "rs"}},
			replaced:   map[types.UID]int{"rs": 2},
			want:       nil,
		},
		"a controller replaced fewer pods than it lost": {
			departures: []departure{{"ns/web-a", "rs"}, {"ns/web-b", "rs"}},
			replaced:   map[types.UID]int{"rs": 1},
			want:       []string{"ns/web-b"},
		},
		"another controller's replacements do not cover a loss": {
			departures: []departure{{"ns/web-a", "rs-web"}},
			replaced:   map[types.UID]int{"rs-other": 3},
			want:       []string{"ns/web-a"},
		},
		"a pod without a controller is never taken over": {
			departures: []departure{{"ns/bare", ""}},
			replaced:   map[types.UID]int{"": 1},
			want:       []string{"ns/bare"},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := lostPods(tt.departures, tt.replaced); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("lost %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBudgetShortfallCountsPodsBelowTheGuarantee(t *testing.T) {
	tests := map[string]struct {
		b    BudgetFigure
		want int
	}{
		"held at the guarantee":   {BudgetFigure{Guarantee: 11, MinReady: 11}, 0},
		"above the guarantee":     {BudgetFigure{Guarantee: 3, MinReady: 4}, 0},
		"two below the guarantee": {BudgetFigure{Guarantee: 11, MinReady: 9}, 2},
		"every pod gone at once":  {BudgetFigure{Guarantee: 1, MinReady: 0}, 1},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := tt.b.shortfall(); got != tt.want {
				t.Fatalf("shortfall %d, want %d", got, tt.want)
			}
		})
	}
}
