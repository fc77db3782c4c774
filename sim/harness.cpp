// Simulated transport: the generated bnn_top under Verilator, its UART pins bridged to pipes.
//
// Usage: simtransport DIVISOR [PENDING_LIMIT [CONTROL_FD]]
//
// Bytes read from stdin are driven bit by bit (8N1, DIVISOR clocks per bit) into the `rx` pin;
// bytes decoded bit by bit from the `tx` pin are written to stdout. So every byte crosses the
// RTL's own UART, exactly as on a board.
//
// CONTROL_FD, if given, is a socket: for each byte read from it the harness writes one line
// "cycles=N rx_bytes=N rx_first=N rx_end=N tx_bytes=N tx_first=N tx_end=N" and starts a new
// measurement window. The counts cover the window: bytes driven into rx and decoded from tx,
// the cycle the first start bit began and the cycle the last stop bit ended on each line (-1
// when none), so the host measures link use in simulated cycles, whatever its own speed.
//
// The harness sleeps in a blocking poll() on stdin whenever nothing can happen: no input
// queued, both UART lines idle, no response frame in progress and no request waiting for its
// response. It knows the last two by counting START bytes each way and reading the length of
// each response frame (the host-link protocol, bnnflow/protocol.py). A request that the design
// drops silently (a truncated frame) would keep it waiting, so after PENDING_LIMIT cycles
// without any tx activity it sleeps anyway.
//
// On EOF on stdin it prints "simtransport: cycles=N" on stderr and exits.

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include "Vbnn_top.h"
#include "verilated.h"

namespace {

constexpr uint8_t START = 0x7E, ESCAPE = 0x7D;

// Tracks response frames on tx so the harness knows when one is still in progress.
struct ResponseTracker {
    bool active = false, escape = false;
    uint32_t count = 0, length = 0;
    uint64_t starts = 0;

    void feed(uint8_t b) {
        if (b == START) {
            active = true, escape = false, count = 0, ++starts;
            return;
        }
        if (!active) return;
        if (escape) {
            b ^= 0x20, escape = false;
        } else if (b == ESCAPE) {
            escape = true;
            return;
        }
        ++count;
        if (count == 3) length = b;
        if (count == 4) length |= uint32_t(b) << 8;
        if (count >= 4 && count == 4 + length + 2) active = false;
    }
};

// Byte counts and first/last bit times of one line within a measurement window.
struct LineWindow {
    uint64_t bytes = 0;
    int64_t first = -1, end = -1;

    void begin(uint64_t cycle) {
        if (first < 0) first = int64_t(cycle);
    }
    void finish(uint64_t cycle) { ++bytes, end = int64_t(cycle); }
};

bool write_all(int fd, const uint8_t* p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w, n -= size_t(w);
    }
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIVISOR [PENDING_LIMIT [CONTROL_FD]]\n", argv[0]);
        return 2;
    }
    const uint64_t divisor = strtoull(argv[1], nullptr, 0);
    const uint64_t pending_limit = argc > 2 ? strtoull(argv[2], nullptr, 0) : 100000000ull;
    const int control = argc > 3 ? atoi(argv[3]) : -1;
    if (divisor < 4) {
        fprintf(stderr, "simtransport: divisor must be >= 4\n");
        return 2;
    }
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);

    VerilatedContext context;
    Vbnn_top top{&context};
    uint64_t cycles = 0;
    auto tick = [&] {
        top.clk = 0;
        top.eval();
        top.clk = 1;
        top.eval();
        ++cycles;
    };
    top.rx = 1;
    top.rst = 1;
    for (int i = 0; i < 4; ++i) tick();
    top.rst = 0;

    std::deque<uint8_t> input;
    uint64_t starts_in = 0;
    uint32_t rx_frame = 0, rx_bits = 0;  // bits left of the byte being driven
    uint64_t rx_timer = 0;
    int tx_state = 0;  // 0 idle, 1 start bit, 2 data bits, 3 stop bit
    uint64_t tx_timer = 0, quiet = 0;
    int tx_bit = 0;
    uint8_t tx_byte = 0;
    ResponseTracker response;
    LineWindow rx_window, tx_window;
    bool eof = false;

    auto report = [&] {
        char line[256];
        int n = snprintf(line, sizeof line,
                         "cycles=%llu rx_bytes=%llu rx_first=%lld rx_end=%lld tx_bytes=%llu "
                         "tx_first=%lld tx_end=%lld\n",
                         (unsigned long long)cycles, (unsigned long long)rx_window.bytes,
                         (long long)rx_window.first, (long long)rx_window.end,
                         (unsigned long long)tx_window.bytes, (long long)tx_window.first,
                         (long long)tx_window.end);
        rx_window = LineWindow{}, tx_window = LineWindow{};
        write_all(control, reinterpret_cast<const uint8_t*>(line), size_t(n));
    };

    while (!eof) {
        bool line_busy = rx_bits || tx_state || !input.empty() || response.active;
        bool pending = starts_in > response.starts && quiet < pending_limit;
        bool sleep = !line_busy && !pending;
        if (sleep || (input.empty() && (cycles & 255) == 0) || (cycles & 4095) == 0) {
            pollfd pfd[2] = {{0, POLLIN, 0}, {control, POLLIN, 0}};
            int r = poll(pfd, control >= 0 ? 2 : 1, sleep ? -1 : 0);
            if (r > 0 && (pfd[0].revents & (POLLIN | POLLHUP))) {
                uint8_t buf[4096];
                ssize_t n = read(0, buf, sizeof buf);
                if (n == 0) eof = true;
                for (ssize_t i = 0; i < n; ++i) input.push_back(buf[i]);
            }
            if (r > 0 && control >= 0 && (pfd[1].revents & (POLLIN | POLLHUP))) {
                uint8_t buf[64];
                ssize_t n = read(control, buf, sizeof buf);
                for (ssize_t i = 0; i < n; ++i) report();
                if (n <= 0) eof = true;
            }
            if (r < 0 && errno != EINTR) eof = true;
        }
        if (!rx_bits && !input.empty()) {
            uint8_t b = input.front();
            input.pop_front();
            starts_in += b == START;
            rx_frame = (1u << 9) | (uint32_t(b) << 1);  // start 0, data LSB first, stop 1
            rx_bits = 10, rx_timer = 0, quiet = 0;
            rx_window.begin(cycles);
        }
        top.rx = rx_bits ? (rx_frame & 1) : 1;
        if (rx_bits && ++rx_timer == divisor) {
            rx_frame >>= 1, --rx_bits, rx_timer = 0;
            if (!rx_bits) rx_window.finish(cycles + 1);
        }
        tick();

        // Decode tx as a UART receiver would: mid-bit sampling from the start edge.
        const int tx = top.tx;
        ++quiet;
        switch (tx_state) {
        case 0:
            if (!tx) tx_state = 1, tx_timer = divisor / 2, quiet = 0, tx_window.begin(cycles - 1);
            break;
        case 1:
            if (--tx_timer == 0) {
                tx_state = tx ? 0 : 2;
                tx_timer = divisor, tx_bit = 0, tx_byte = 0;
            }
            break;
        case 2:
            if (--tx_timer == 0) {
                tx_byte |= uint8_t(tx << tx_bit);
                tx_timer = divisor;
                if (++tx_bit == 8) tx_state = 3;
            }
            break;
        case 3:
            if (--tx_timer == 0) {
                tx_state = 0;
                quiet = 0;
                if (!tx) {
                    fprintf(stderr, "simtransport: framing error on tx at cycle %llu\n",
                            (unsigned long long)cycles);
                    break;
                }
                response.feed(tx_byte);
                tx_window.finish(cycles + divisor / 2);
                if (!write_all(1, &tx_byte, 1)) eof = true;
            }
            break;
        }
    }
    fprintf(stderr, "simtransport: cycles=%llu\n", (unsigned long long)cycles);
    top.final();
    return 0;
}
