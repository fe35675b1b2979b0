package scenario

import (
	"k8s.io/apimachinery/pkg/types"
)

// departure is a pod whose work stopped on the draining node: it left, or
// it was still there when the deadline passed. owner is its controller's
// UID, empty for a pod without one.
type departure struct {
	pod   string
	owner types.UID
}

// lostPods returns the departures nothing took over. replaced counts, per
// controller, the new pods that became Ready on other nodes; each covers one
// departure of the same controller. A pod without a controller is never
// taken over.
func lostPods(departures []departure, replaced map[types.UID]int) []string {
	left := make(map[types.UID]int, len(replaced))
	for uid, n := range replaced {
		left[uid] = n
	}
	var lost []string
	for _, d := range departures {
		if d.owner != "" && left[d.owner] > 0 {
			left[d.owner]--
			continue
		}
		lost = append(lost, d.pod)
	}
	return lost
}

// BudgetFigure is how a PodDisruptionBudget fared in a scenario.
type BudgetFigure struct {
	App       string `json:"app"`
	Guarantee int    `json:"guarantee"`
	// MinReady is the fewest Ready pods seen from the notice to the end.
	MinReady int `json:"min_ready"`
}

// shortfall is the number of pods below the guarantee at the worst moment.
func (b BudgetFigure) shortfall() int { return max(0, b.Guarantee-b.MinReady) }
