package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/internal/pki"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
)

// chromium finds the headless browser: $KVD_CHROMIUM, else Debian's
// chromium, which `make test` installs. Without one the test fails, and
// says how to get one, unless KVD_NO_BROWSER is set.
func chromium(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("KVD_CHROMIUM"), "chromium", "chromium-browser"} {
		if p == "" {
			continue
		}
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("KVD_NO_BROWSER") != "" {
		t.Skip("no headless browser, and KVD_NO_BROWSER is set")
	}
	t.Fatal("no headless browser: install Debian's chromium (make browser), or set KVD_CHROMIUM to one")
	return ""
}

// eval runs a JavaScript expression in the page until it returns true,
// or fails the test after within.
func waitTrue(t *testing.T, ctx context.Context, within time.Duration, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			html, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("main").innerText`))
			t.Fatalf("the page did not show %s within %v (last error %v); it shows:\n%s", what, within, err, html)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The console in a real headless browser, on a 3-node, 3-group cluster:
// it shows the nodes, the groups with their leaders and the slot bar;
// when group 1's leader is stopped it shows the new leader and the event
// within 10 s without a reload; the key browser finds a key written by
// the test. With KVD_SCREENSHOT=FILE it also saves a screenshot there
// (`make screenshot` writes docs/console.png).
func TestConsole_InAHeadlessBrowser(t *testing.T) {
	exe := chromium(t)
	c := testcluster.New(t, 3, 3)
	ctx := context.Background()
	cl, err := client.New(ctx, client.DefaultConfig(c.URLs()...))
	require.NoError(t, err)
	defer cl.Close()
	_, err = cl.Put(ctx, "console/greeting", []byte("hello from the test"))
	require.NoError(t, err)
	_, err = cl.Put(ctx, "console/binary", []byte{0xff, 0x00, 0x10})
	require.NoError(t, err)
	_, err = cl.Put(ctx, "console/session", []byte("short-lived"), client.WithTTL(time.Hour))
	require.NoError(t, err)

	// Some load while the page is open, for its live figures.
	loadCtx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		for i := 0; loadCtx.Err() == nil && i < 100000; i++ {
			_, _ = cl.Put(loadCtx, fmt.Sprintf("load/%d", i%500), []byte("x"))
		}
	}()
	defer func() { stopLoad(); <-loadDone }()

	page := (c.Leader(1) + 1) % 3 // the page stays up when the leader goes

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.WindowSize(1200, 1400), chromedp.Flag("headless", "new"))
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	bctx, cancelT := context.WithTimeout(bctx, 90*time.Second)
	defer cancelT()
	require.NoError(t, chromedp.Do(bctx, chromedp.Navigate(c.URL(page)+"/ui/")))

	waitTrue(t, bctx, 15*time.Second, "3 nodes and 3 groups with leaders",
		`document.querySelectorAll("#nodes tbody tr").length === 3 &&
		 document.querySelectorAll("#groups tbody tr").length === 3 &&
		 [...document.querySelectorAll("#groups tbody td.leader")].every(td => /^n\d$/.test(td.textContent))`)
	waitTrue(t, bctx, 5*time.Second, "the slot bar covering 3 groups",
		`new Set([...document.querySelectorAll("#slot-bar div")].map(d => d.dataset.group)).size === 3`)
	waitTrue(t, bctx, 10*time.Second, "live figures: requests per second and every replica's applied index",
		`[...document.querySelectorAll("#nodes tbody tr")].some(tr => /^\d+$/.test(tr.children[4].textContent) && tr.children[4].textContent !== "0") &&
		 [...document.querySelectorAll("#groups tbody tr")].every(tr => /n\d \d+/.test(tr.children[9].textContent)) &&
		 [...document.querySelectorAll("#groups tbody tr")].some(tr => /^\d+$/.test(tr.children[5].textContent) && tr.children[5].textContent !== "0")`)
	// The page's view of group 1's leader (leaders may have moved since
	// the cluster started): stop that node, from a page on another one.
	shown, err := chromedp.Run(bctx, chromedp.TextContent(chromedp.CSS(`#groups tbody tr[data-group="1"] td.leader`)))
	require.NoError(t, err)
	leader := -1
	for i := range 3 {
		if testcluster.NodeID(i) == shown {
			leader = i
		}
	}
	require.GreaterOrEqual(t, leader, 0, "group 1's leader on the page: %q", shown)
	oldLeader := shown
	if leader == page {
		page = (leader + 1) % 3
		require.NoError(t, chromedp.Do(bctx, chromedp.Navigate(c.URL(page)+"/ui/")))
		waitTrue(t, bctx, 15*time.Second, "the groups again", `document.querySelectorAll("#groups tbody tr").length === 3`)
	}

	c.Stop(leader)
	start := time.Now()
	waitTrue(t, bctx, 10*time.Second, "group 1's new leader and the event",
		`(() => { const l = document.querySelector('#groups tbody tr[data-group="1"] td.leader').textContent;
		  return /^n\d$/.test(l) && l !== "`+oldLeader+`" &&
		    [...document.querySelectorAll("#events li")].some(li => li.textContent.includes("group 1: leader `+oldLeader+`")); })()`)
	t.Logf("the page showed group 1's new leader %v after the old one stopped", time.Since(start).Round(100*time.Millisecond))
	waitTrue(t, bctx, 10*time.Second, "the new leader's own event from its node's log",
		`(() => { const l = document.querySelector('#groups tbody tr[data-group="1"] td.leader').textContent;
		  return [...document.querySelectorAll("#events li")].some(li => li.textContent.includes("group 1: " + l + " became leader")); })()`)
	waitTrue(t, bctx, 10*time.Second, "the stopped node as down",
		`document.querySelector('#nodes tbody tr[data-node="`+oldLeader+`"] td.health').textContent === "down"`)

	require.NoError(t, chromedp.Do(bctx,
		chromedp.SetValue(chromedp.ID("prefix"), "console/"),
		chromedp.Click(chromedp.CSS(`#scan-form button[type="submit"]`))))
	waitTrue(t, bctx, 10*time.Second, "the key written by the test",
		`!!document.querySelector('#keys tbody tr[data-key="console/greeting"]')`)
	require.NoError(t, chromedp.Do(bctx, chromedp.Click(chromedp.CSS(`#keys tbody tr[data-key="console/greeting"] td`))))
	waitTrue(t, bctx, 10*time.Second, "the key's value", `document.querySelector("#detail-value").textContent === "hello from the test"`)
	require.NoError(t, chromedp.Do(bctx, chromedp.Click(chromedp.CSS(`#keys tbody tr[data-key="console/session"] td`))))
	waitTrue(t, bctx, 10*time.Second, "the TTL of a key that has one", `document.querySelector("#detail-meta").textContent.includes("expires")`)
	require.NoError(t, chromedp.Do(bctx, chromedp.Click(chromedp.CSS(`#keys tbody tr[data-key="console/greeting"] td`))))
	waitTrue(t, bctx, 10*time.Second, "the key's value again", `document.querySelector("#detail-value").textContent === "hello from the test"`)

	// An admin (auth is off here) transfers group 2's leadership from the
	// page; the page then shows the new leader.
	waitTrue(t, bctx, 10*time.Second, "the admin section", `!document.querySelector("#admin").hidden`)
	from, err := chromedp.Run(bctx, chromedp.TextContent(chromedp.CSS(`#groups tbody tr[data-group="2"] td.leader`)))
	require.NoError(t, err)
	to, err := chromedp.Run(bctx, chromedp.Evaluate[string](`(() => {
		const g = document.querySelector("#leader-group"); g.value = "2"; g.dispatchEvent(new Event("change"));
		const n = document.querySelector("#leader-node");
		const live = [...n.options].map(o => o.value).filter(v => v !== "`+oldLeader+`");
		n.value = live[0] || ""; return n.value; })()`))
	require.NoError(t, err)
	require.NotEmpty(t, to, "a live voter of group 2 other than its leader %s", from)
	require.NoError(t, chromedp.Do(bctx, chromedp.Click(chromedp.CSS(`#leader-form button[type="submit"]`))))
	waitTrue(t, bctx, 15*time.Second, "group 2 led by "+to,
		`document.querySelector('#groups tbody tr[data-group="2"] td.leader').textContent === "`+to+`"`)
	result, err := chromedp.Run(bctx, chromedp.TextContent(chromedp.ID("admin-result")))
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(result, "200"), "the transfer's answer: %q", result)

	if path := os.Getenv("KVD_SCREENSHOT"); path != "" {
		png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		require.NoError(t, err)
		if !strings.HasSuffix(path, ".png") {
			t.Fatalf("KVD_SCREENSHOT must name a .png file, not %q", path)
		}
		require.NoError(t, os.WriteFile(path, png, 0o644))
		t.Logf("screenshot: %s (%d bytes)", path, len(png))
	}
}

// With auth: the page loads without a token, asks for one on the first
// 401, and then shows what that token may read. A token granted app/
// sees the cluster and app/ keys, gets the API's refusal for other keys,
// and no admin section; the root (admin) token gets the admin section.
func TestConsole_WithAuthAsksForATokenAndShowsWhatItAllows(t *testing.T) {
	exe := chromium(t)
	sec := testcluster.NewSecure(t)
	c := testcluster.New(t, 3, 2, func(cfg *server.Config) {
		cert, key := pki.CertFiles(sec.Dir, pki.Node, cfg.NodeID)
		cfg.TLSCertFile, cfg.TLSKeyFile = cert, key // no client certificates: a browser has none
		cfg.PeerTLSCertFile, cfg.PeerTLSKeyFile, cfg.PeerTLSCAFile = cert, key, sec.CAFile
		cfg.Auth, cfg.RootTokenFile = true, sec.RootTokenFile
	})
	root := "Bearer " + sec.RootToken(t)
	r := sec.Do(t, "POST", c.SecureURL(0)+"/v1/admin/tokens",
		[]byte(`{"name":"app","grants":[{"prefix":"app/","access":"write"}],"ttl":"1h"}`), "Authorization", root)
	require.Equal(t, 200, r.Status, "%s", r.Body)
	var made struct{ Token string }
	require.NoError(t, json.Unmarshal(r.Body, &made))
	for _, k := range []string{"app/visible", "secret/hidden"} {
		r := sec.Do(t, "PUT", c.SecureURL(0)+"/v1/kv/"+k, []byte("v"), "Authorization", root)
		require.Equal(t, 200, r.Status, "%s", r.Body)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.Flag("headless", "new"),
		chromedp.Flag("ignore-certificate-errors", true)) // the test's own CA, not the system's
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	bctx, cancelT := context.WithTimeout(bctx, 90*time.Second)
	defer cancelT()

	require.NoError(t, chromedp.Do(bctx, chromedp.Navigate(c.SecureURL(1)+"/ui/")))
	waitTrue(t, bctx, 10*time.Second, "the token form", `!document.querySelector("#token-form").hidden`)
	require.NoError(t, chromedp.Do(bctx,
		chromedp.SetValue(chromedp.ID("token"), made.Token),
		chromedp.Click(chromedp.CSS(`#token-form button[type="submit"]`))))
	waitTrue(t, bctx, 10*time.Second, "the groups, for the app/ token",
		`document.querySelectorAll("#groups tbody tr").length === 2 && document.querySelector("#error").hidden`)
	hidden, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.querySelector("#admin").hidden`))
	require.NoError(t, err)
	require.True(t, hidden, "no admin section for a token that is not an admin's")

	require.NoError(t, chromedp.Do(bctx,
		chromedp.SetValue(chromedp.ID("prefix"), "app/"),
		chromedp.Click(chromedp.CSS(`#scan-form button[type="submit"]`))))
	waitTrue(t, bctx, 10*time.Second, "the app/ key", `!!document.querySelector('#keys tbody tr[data-key="app/visible"]')`)
	require.NoError(t, chromedp.Do(bctx,
		chromedp.SetValue(chromedp.ID("prefix"), "secret/"),
		chromedp.Click(chromedp.CSS(`#scan-form button[type="submit"]`))))
	waitTrue(t, bctx, 10*time.Second, "the API's refusal of secret/",
		`!document.querySelector("#error").hidden && document.querySelector("#error").textContent.includes("forbidden") &&
		 !document.querySelector('#keys tbody tr[data-key="secret/hidden"]')`)

	// The root token is an admin's: the admin section appears.
	require.NoError(t, chromedp.Do(bctx,
		chromedp.Click(chromedp.ID("token-button")),
		chromedp.SetValue(chromedp.ID("token"), strings.TrimPrefix(root, "Bearer ")),
		chromedp.Click(chromedp.CSS(`#token-form button[type="submit"]`))))
	waitTrue(t, bctx, 10*time.Second, "the admin section for the root token", `!document.querySelector("#admin").hidden`)
}
