package console_test

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/console"
)

func get(t *testing.T, method, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// The page and its assets are served from the binary with their types,
// under a policy that lets the page load nothing from elsewhere; other
// methods and paths outside the assets are refused.
func TestConsole_ServesItsEmbeddedAssets(t *testing.T) {
	srv := httptest.NewServer(http.StripPrefix("", console.Handler()))
	defer srv.Close()
	for path, ctype := range map[string]string{"/ui/": "text/html", "/ui/app.js": "javascript", "/ui/style.css": "text/css"} {
		resp, body := get(t, "GET", srv.URL+path)
		require.Equal(t, 200, resp.StatusCode, path)
		require.Contains(t, resp.Header.Get("Content-Type"), ctype, path)
		require.Contains(t, resp.Header.Get("Content-Security-Policy"), "default-src 'self'", path)
		require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
		require.NotEmpty(t, body)
	}
	resp, body := get(t, "POST", srv.URL+"/ui/")
	require.Equal(t, 405, resp.StatusCode)
	require.Contains(t, body, `"code"`)
	require.Contains(t, body, `"method_not_allowed"`)
	require.Equal(t, "GET, HEAD", resp.Header.Get("Allow"))
	resp, _ = get(t, "GET", srv.URL+"/ui/missing.js")
	require.Equal(t, 404, resp.StatusCode)
}

// No asset names a place outside the node: no scheme-qualified or
// protocol-relative URL in a src, href, import or fetch.
func TestConsole_FetchesNothingFromOutside(t *testing.T) {
	outside := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?\s*(https?:)?//|url\(\s*["']?(https?:)?//|fetch\(\s*["'](https?:)?//|import\s.*["'](https?:)?//`)
	n := 0
	err := fs.WalkDir(os.DirFS("assets"), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile("assets/" + path)
		require.NoError(t, err)
		n++
		for i, line := range strings.Split(string(b), "\n") {
			require.False(t, outside.MatchString(line), "%s:%d reaches outside the node: %s", path, i+1, line)
		}
		return nil
	})
	require.NoError(t, err)
	require.GreaterOrEqual(t, n, 3)
}
