module execd-bench/go-download

go 1.19
