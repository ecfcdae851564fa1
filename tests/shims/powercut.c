/* powercut: an LD_PRELOAD shim that records, at each sync point, what a power cut would
 * certainly keep of the files in one directory, so that a test can build the disk image a
 * power cut may leave after killing the process at any moment.
 *
 * The model. A write reaches the page cache; a power cut keeps of it only what a sync made
 * durable. When fsync or fdatasync on a regular file in $POWERCUT_DIR returns success,
 * everything written to that file before the call is on the disk. So the shim copies the
 * file's whole content, read just before the real call, to $POWERCUT_DIR/.durable/<inode>
 * (a temp file renamed into place once the real call has succeeded; never synced itself).
 * A file's name is durable only when its directory is synced (SQLite does that for its
 * journals; the buffer's .seq file is written, synced, renamed, and then the directory is
 * synced). So a sync of $POWERCUT_DIR itself writes .durable/names, one "<inode> <name>"
 * line per regular file, listed just before the real call. Everything written since is
 * page cache only: the test overlays any subset of it, sector by sector.
 *
 * Copies are keyed by inode, not by name, because a rename moves content between names: the
 * copy made when "x.tmp" was synced is what "x" holds once the rename is durable. Limits: a
 * sector written twice between two syncs may reach the disk in its first version, which the
 * image never uses (only the durable or the latest); and only one flat directory is watched.
 * Syncs are serialised by a mutex, so copies and name lists are published in sync order.
 *
 * $POWERCUT_SYNC_DELAY_US (optional) makes each watched sync take that much longer, as on a
 * slow SD card: written-but-not-yet-synced data then sits in the page cache for longer, and a
 * kill at a random moment more often lands where a power cut would lose some of it.
 * $POWERCUT_KILL_AT_SYNC=N (optional) aims the cut there: the process SIGKILLs itself in its
 * Nth watched sync, after the data was written and before the sync has made it durable.
 *
 * Build: gcc -Wall -Wextra -O2 -shared -fPIC -o powercut.so powercut.c -ldl
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef int (*sync_fn)(int);

#define OUT_MAX (PATH_MAX + 64) /* the watched directory, then "/.durable/<inode>.tmp" */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* The watched directory (resolved), or "" when $POWERCUT_DIR is unset or missing. */
static const char *watched(void) {
    static char dir[PATH_MAX];
    static int done;
    if (!done) {
        const char *env = getenv("POWERCUT_DIR");
        if (!env || !realpath(env, dir)) dir[0] = '\0';
        done = 1;
    }
    return dir;
}

/* Copy everything readable from src into a new file at tmp; 0 on success. */
static int copy_into(int src, const char *tmp) {
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) return -1;
    char buf[65536];
    ssize_t n;
    int rc = 0;
    while ((n = read(src, buf, sizeof buf)) > 0) {
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(out, buf + done, (size_t)(n - done));
            if (w < 0) {
                rc = -1;
                break;
            }
            done += w;
        }
        if (rc) break;
    }
    if (n < 0) rc = -1;
    close(out);
    return rc;
}

/* List the regular files of dir as "<inode> <name>" lines into tmp; 0 on success. */
static int list_names(const char *dir, const char *tmp) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    FILE *out = fopen(tmp, "we");
    if (!out) {
        closedir(d);
        return -1;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat st;
        if (e->d_name[0] == '.') continue;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
            fprintf(out, "%llu %s\n", (unsigned long long)st.st_ino, e->d_name);
    }
    closedir(d);
    return fclose(out) == 0 ? 0 : -1;
}

/* Before the real sync: stage what it will make durable in *tmp, the final name in *dst.
 * Returns 1 when staged, 0 when the fd is not watched, -1 when staging failed. */
static int stage(int fd, char *tmp, char *dst) {
    const char *dir = watched();
    if (!dir[0]) return 0;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = '\0';
    struct stat st;
    if (fstat(fd, &st) != 0) return 0;
    size_t len = strlen(dir);
    if (S_ISDIR(st.st_mode)) {
        if (strcmp(path, dir) != 0) return 0;
        snprintf(tmp, OUT_MAX, "%s/.durable/names.tmp", dir);
        snprintf(dst, OUT_MAX, "%s/.durable/names", dir);
        return list_names(dir, tmp) == 0 ? 1 : -1;
    }
    if (!S_ISREG(st.st_mode) || st.st_nlink == 0 || strncmp(path, dir, len) != 0
        || path[len] != '/' || strchr(path + len + 1, '/') != NULL)
        return 0;
    snprintf(tmp, OUT_MAX, "%s/.durable/%llu.tmp", dir, (unsigned long long)st.st_ino);
    snprintf(dst, OUT_MAX, "%s/.durable/%llu", dir, (unsigned long long)st.st_ino);
    int src = open(link, O_RDONLY | O_CLOEXEC); /* the fd itself may be write-only */
    if (src < 0) return -1;
    int rc = copy_into(src, tmp);
    close(src);
    return rc == 0 ? 1 : -1;
}

static long env_long(const char *name) {
    const char *env = getenv(name);
    return env ? strtol(env, NULL, 10) : 0;
}

/* Called with the lock held, between staging and the real sync. */
static void slow_disk(void) {
    static long us = -1, kill_at = -1, count;
    if (us < 0) {
        us = env_long("POWERCUT_SYNC_DELAY_US");
        kill_at = env_long("POWERCUT_KILL_AT_SYNC");
    }
    if (++count == kill_at) raise(SIGKILL);
    if (us > 0) {
        struct timespec t = {us / 1000000, (us % 1000000) * 1000};
        nanosleep(&t, NULL);
    }
}

/* A record that could not be made would make the image lie: stop the process loudly. */
static void fail(const char *what, const char *path) {
    fprintf(stderr, "powercut: cannot %s %s\n", what, path);
    abort();
}

static int synced(sync_fn real, int fd) {
    char tmp[OUT_MAX] = "", dst[OUT_MAX] = "";
    pthread_mutex_lock(&lock);
    int staged = stage(fd, tmp, dst);
    if (staged < 0) fail("stage", tmp);
    if (staged) slow_disk();
    int rc = real(fd);
    if (staged) {
        if (rc == 0 && rename(tmp, dst) != 0) fail("rename", tmp);
        if (rc != 0) unlink(tmp);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int fsync(int fd) {
    static sync_fn real;
    if (!real) real = (sync_fn)dlsym(RTLD_NEXT, "fsync");
    return synced(real, fd);
}

int fdatasync(int fd) {
    static sync_fn real;
    if (!real) real = (sync_fn)dlsym(RTLD_NEXT, "fdatasync");
    return synced(real, fd);
}
