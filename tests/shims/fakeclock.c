/* fakeclock: an LD_PRELOAD shim that gives one process a wall clock the test can step, and a
 * kernel "clock synchronised" flag the test can set, without touching the machine's clock.
 *
 * The file named by $FAKECLOCK_FILE holds "<offset seconds> <synced 0|1>". CLOCK_REALTIME
 * (and gettimeofday, time) read the real clock plus the offset; adjtimex, ntp_adjtime and
 * clock_adjtime in read-only mode report TIME_OK when synced is 1 and TIME_ERROR when 0,
 * as the kernel does before and after NTP sets the clock. The monotonic and boot clocks are
 * left alone, as a real clock step leaves them. The file is re-read at most every 2 ms.
 *
 * Build: gcc -Wall -Wextra -O2 -shared -fPIC -o fakeclock.so fakeclock.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);
typedef int (*adjtimex_fn)(struct timex *);
typedef int (*clock_adjtime_fn)(clockid_t, struct timex *);

static volatile long long offset_ns;
static volatile int synced = 1;
static volatile long long last_read_ns = -1000000000LL;

static clock_gettime_fn real_clock_gettime(void) {
    static clock_gettime_fn fn;
    if (!fn) fn = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
    return fn;
}

static void refresh(void) {
    struct timespec now;
    if (real_clock_gettime()(CLOCK_MONOTONIC, &now) != 0) return;
    long long t = now.tv_sec * 1000000000LL + now.tv_nsec;
    if (t - last_read_ns < 2000000LL) return;
    last_read_ns = t;
    const char *path = getenv("FAKECLOCK_FILE");
    if (!path) return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    char buf[64];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return;
    buf[n] = '\0';
    char *end;
    double off = strtod(buf, &end);
    if (end == buf) return;
    long s = strtol(end, NULL, 10);
    offset_ns = (long long)(off * 1e9);
    synced = s != 0;
}

static int is_realtime(clockid_t id) {
    return id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    int rc = real_clock_gettime()(id, ts);
    if (rc != 0 || !is_realtime(id)) return rc;
    refresh();
    long long t = ts->tv_sec * 1000000000LL + ts->tv_nsec + offset_ns;
    ts->tv_sec = (time_t)(t / 1000000000LL);
    ts->tv_nsec = (long)(t % 1000000000LL);
    if (ts->tv_nsec < 0) {
        ts->tv_nsec += 1000000000L;
        ts->tv_sec -= 1;
    }
    return 0;
}

int gettimeofday(struct timeval *tv, void *tz) {
    (void)tz;
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}

static int fake_state(int rc, const struct timex *buf) {
    if (rc < 0 || buf->modes != 0) return rc;
    refresh();
    return synced ? TIME_OK : TIME_ERROR;
}

int adjtimex(struct timex *buf) {
    static adjtimex_fn fn;
    if (!fn) fn = (adjtimex_fn)dlsym(RTLD_NEXT, "adjtimex");
    return fake_state(fn(buf), buf);
}

int ntp_adjtime(struct timex *buf) {
    static adjtimex_fn fn;
    if (!fn) fn = (adjtimex_fn)dlsym(RTLD_NEXT, "ntp_adjtime");
    return fake_state(fn(buf), buf);
}

int clock_adjtime(clockid_t id, struct timex *buf) {
    static clock_adjtime_fn fn;
    if (!fn) fn = (clock_adjtime_fn)dlsym(RTLD_NEXT, "clock_adjtime");
    return fake_state(fn(id, buf), buf);
}
