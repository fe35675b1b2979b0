package daemon

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"
)

// scrapeAuth lets a request through only when the API server authenticates
// its bearer token (TokenReview) and authorizes that user for get on the
// request's path as a non-resource URL (SubjectAccessReview): what the
// Kubernetes components do for their own /metrics, and what
// controller-runtime's metrics filter does. That filter is not used: it
// brings k8s.io/apiserver, which doubled the binary (47 to 90 MB) and
// raised the agent's resident memory at start from 31 to 53 MiB, most of
// the agent's 64 MiB limit.
//
// Answers are cached (token reviews for a minute, failed ones for ten
// seconds, allowed access for five minutes, denied for 30 s) in maps of a
// bounded size, so a scraper costs a few API calls a minute and a flood of
// made-up tokens costs at most what the client's own rate limiter allows.
type scrapeAuth struct {
	client kubernetes.Interface
	clock  clock.PassiveClock

	mu     sync.Mutex
	users  map[[sha256.Size]byte]cachedUser
	access map[string]cachedAccess
}

const (
	tokenTTL       = time.Minute
	failedTokenTTL = 10 * time.Second
	allowTTL       = 5 * time.Minute
	denyTTL        = 30 * time.Second
	// maxCached bounds each cache; when full, expired entries go, and if
	// none has expired the cache starts over.
	maxCached = 1024
	// reviewTimeout bounds one review call, rate limiter wait included;
	// it ends well inside the metrics server's write timeout.
	reviewTimeout = 5 * time.Second
)

type cachedUser struct {
	user    *authenticationv1.UserInfo // nil: the token was not accepted
	expires time.Time
}

type cachedAccess struct {
	allowed bool
	expires time.Time
}

func newScrapeAuth(client kubernetes.Interface, clk clock.PassiveClock) *scrapeAuth {
	return &scrapeAuth{client: client, clock: clk, users: map[[sha256.Size]byte]cachedUser{}, access: map[string]cachedAccess{}}
}

// errReview is a review call that failed (API server unreachable, budget
// spent): neither a yes nor a no.
var errReview = errors.New("review failed")

// wrap checks every request before next. Failed review calls are logged
// at V(1): under a flood they would be a line per request, and
// termgate_metrics_server_requests_refused_total counts them anyway.
func (a *scrapeAuth) wrap(next http.Handler, log logr.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := bearerToken(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="termgate"`)
			http.Error(w, "Unauthorized: a bearer token is required", http.StatusUnauthorized)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), reviewTimeout)
		defer cancel()
		user, err := a.authenticate(ctx, token)
		switch {
		case errors.Is(err, errReview):
			log.V(1).Info("Token review failed", "err", err.Error())
			http.Error(w, "token review failed", http.StatusInternalServerError)
			return
		case user == nil:
			w.Header().Set("WWW-Authenticate", `Bearer realm="termgate"`)
			http.Error(w, "Unauthorized: token not accepted", http.StatusUnauthorized)
			return
		}
		allowed, err := a.authorize(ctx, user, strings.ToLower(r.Method), r.URL.Path)
		switch {
		case err != nil:
			log.V(1).Info("Access review failed", "user", user.Username, "err", err.Error())
			http.Error(w, "access review failed", http.StatusInternalServerError)
			return
		case !allowed:
			http.Error(w, fmt.Sprintf("Forbidden: %s may not %s %s", user.Username, strings.ToLower(r.Method), r.URL.Path), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func bearerToken(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	token = strings.TrimSpace(token)
	return token, ok && strings.EqualFold(scheme, "bearer") && token != ""
}

// authenticate returns the token's user, nil when the API server does not
// accept the token.
func (a *scrapeAuth) authenticate(ctx context.Context, token string) (*authenticationv1.UserInfo, error) {
	key := sha256.Sum256([]byte(token))
	now := a.clock.Now()
	a.mu.Lock()
	c, ok := a.users[key]
	a.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.user, nil
	}
	tr, err := a.client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errReview, err)
	}
	c = cachedUser{expires: now.Add(failedTokenTTL)}
	if tr.Status.Authenticated {
		c = cachedUser{user: &tr.Status.User, expires: now.Add(tokenTTL)}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	prune(a.users, now, func(c cachedUser) time.Time { return c.expires })
	a.users[key] = c
	return c.user, nil
}

// authorize asks whether user may use verb on the non-resource URL path.
func (a *scrapeAuth) authorize(ctx context.Context, user *authenticationv1.UserInfo, verb, path string) (bool, error) {
	key := accessKey(user, verb, path)
	now := a.clock.Now()
	a.mu.Lock()
	c, ok := a.access[key]
	a.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.allowed, nil
	}
	extra := make(map[string]authorizationv1.ExtraValue, len(user.Extra))
	for k, v := range user.Extra {
		extra[k] = authorizationv1.ExtraValue(v)
	}
	sar, err := a.client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user.Username, UID: user.UID, Groups: user.Groups, Extra: extra,
			NonResourceAttributes: &authorizationv1.NonResourceAttributes{Path: path, Verb: verb},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("%w: %w", errReview, err)
	}
	c = cachedAccess{allowed: sar.Status.Allowed, expires: now.Add(denyTTL)}
	if c.allowed {
		c.expires = now.Add(allowTTL)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	prune(a.access, now, func(c cachedAccess) time.Time { return c.expires })
	a.access[key] = c
	return c.allowed, nil
}

// accessKey identifies a decision: who (name, uid, groups, extra) does
// what.
func accessKey(u *authenticationv1.UserInfo, verb, path string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%q %q %q %q", verb, path, u.Username, u.UID)
	for _, g := range u.Groups {
		fmt.Fprintf(&b, " g%q", g)
	}
	keys := make([]string, 0, len(u.Extra))
	for k := range u.Extra {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " e%q=%q", k, u.Extra[k])
	}
	return b.String()
}

// prune makes room in a full cache: expired entries go first, and if none
// had expired, all of them.
func prune[K comparable, V any](m map[K]V, now time.Time, expires func(V) time.Time) {
	if len(m) < maxCached {
		return
	}
	for k, v := range m {
		if !now.Before(expires(v)) {
			delete(m, k)
		}
	}
	if len(m) >= maxCached {
		clear(m)
	}
}
