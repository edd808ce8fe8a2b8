package apierr

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/stretchr/testify/require"
)

// A request fasthttp cannot parse is a 400 that describes the problem without quoting the request back:
// the raw headers it would quote include the caller's bearer token.
func TestMalformedRequestIsNotEchoed(t *testing.T) {
	t.Parallel()
	app := fiber.New(fiber.Config{ErrorHandler: FiberErrorHandler, DisableStartupMessage: true})
	app.Get("/x", func(c *fiber.Ctx) error { return c.SendString("ok") })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = app.Listener(ln) }()
	t.Cleanup(func() { _ = app.Shutdown() })

	conn, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(conn, "POST /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cr3t-token\ntoken>\n'Authorization:\r\nContent-Length: 0\r\n\r\n")
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	out := string(body)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, out)
	require.Contains(t, out, `"malformed HTTP request`)
	require.False(t, strings.Contains(out, "s3cr3t-token"), "the answer quotes the request: %s", out)
}
