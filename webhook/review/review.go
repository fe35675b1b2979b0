// Package review is the admission plumbing shared by termgate's gates: it
// decodes an AdmissionReview strictly, hands the request to one gate and
// encodes the gate's answer. It exists instead of controller-runtime's
// admission.Webhook for two reasons: a malformed call must get HTTP 400 (not
// 200 with an error inside the review), and the bind path runs thousands of
// times a second, so decoding keeps only the fields a gate reads and the
// response is written without reflection.
package review

import (
	"context"
)

// Request is the part of an admission.k8s.io/v1 AdmissionRequest that the
// gates read. Object and OldObject stay raw: each gate decodes only what it
// needs (a Binding's target, a Pod's tolerations).
type Request struct {
	UID         string `json:"uid"`
	SubResource string `json:"subResource"`
	Name        string `json:"name"`
	Namespace   string `json:"namespace"`
	Operation   string `json:"operation"`
	// DryRun is set for requests that change nothing (dryRun=All).
	DryRun    bool      `json:"dryRun"`
	UserInfo  UserInfo  `json:"userInfo"`
	Object    RawObject `json:"object"`
	OldObject RawObject `json:"oldObject"`
}

// RawObject is an object of the review kept as JSON. Unlike
// json.RawMessage it does not copy: it points into the request body, which
// the handler keeps until the answer is written. With reviews of several
// MiB this keeps one copy of the body in memory instead of two. A gate must
// not keep it after Admit returns.
type RawObject []byte

// UnmarshalJSON keeps data as is (no copy).
func (r *RawObject) UnmarshalJSON(data []byte) error {
	*r = data
	return nil
}

// UserInfo is who made the request. Extra carries, for service-account tokens
// bound to a pod, the node that pod runs on.
type UserInfo struct {
	Username string              `json:"username"`
	Extra    map[string][]string `json:"extra"`
}

// Operations a gate may see.
const (
	OperationCreate = "CREATE"
	OperationUpdate = "UPDATE"
	OperationDelete = "DELETE"
)

// Response is a gate's verdict. The zero value denies without a reason, so
// gates build responses with Allow, Deny or Patch.
type Response struct {
	Allowed bool
	// Code and Message explain a denial to the caller (the scheduler's event,
	// kubectl's error).
	Code    int32
	Message string
	// Patch is a JSON patch for mutating gates; nil means no change.
	Patch []byte
	// Verdict labels the decision in metrics and logs, for example
	// "allowed-not-terminating" or "denied". Gates keep it to a small fixed
	// set so metric cardinality stays bounded.
	Verdict string
}

// Allow returns an allowing response labelled verdict.
func Allow(verdict string) Response { return Response{Allowed: true, Verdict: verdict} }

// Deny returns a 403 denial with message, labelled verdict.
func Deny(verdict, message string) Response {
	return Response{Code: 403, Message: message, Verdict: verdict}
}

// Invalid returns a 400 denial for an object the gate refuses as malformed.
func Invalid(verdict, message string) Response {
	return Response{Code: 400, Message: message, Verdict: verdict}
}

// Gate is one admission concern.
type Gate interface {
	// Name labels the gate in metrics and logs.
	Name() string
	// Admit decides on req. It never panics on bad input: an object it
	// cannot decode is answered, not crashed on.
	Admit(ctx context.Context, req *Request) Response
}
