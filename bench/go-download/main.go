// A stand-in for OpenSandbox's Go execd download route, for
// bench/download-disk.sh (issue 20 §2). Go execd itself needs Go 1.24 and
// modules this machine cannot fetch; this uses only the standard library.
//
// Go execd answers GET /files/download with http.ServeContent, called through
// gin 1.10's ResponseWriter. That writer has no ReadFrom method, so
// ServeContent's io.CopyN cannot reach net/http's sendfile path: the body is
// copied through user space in io.Copy's 32 KiB buffer. The default mode
// reproduces that by hiding ReadFrom behind a wrapper; -sendfile calls
// ServeContent on net/http's own writer, which sends the file with sendfile(2).
//
// Prints the port it listens on, then serves until killed.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
)

// plainWriter exposes only http.ResponseWriter's methods, as gin's
// responseWriter does: no io.ReaderFrom.
type plainWriter struct{ http.ResponseWriter }

func main() {
	sendfile := flag.Bool("sendfile", false, "let net/http send the body with sendfile(2)")
	flag.Parse()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	http.HandleFunc("/files/download", func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Query().Get("path")
		f, err := os.Open(p)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		if !*sendfile {
			w = plainWriter{w}
		}
		http.ServeContent(w, r, filepath.Base(p), st.ModTime(), f)
	})
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	if err := http.Serve(ln, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
