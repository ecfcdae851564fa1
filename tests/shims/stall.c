/* stall: an LD_PRELOAD shim that makes fsync and fdatasync hang while a file exists, as a
 * dying SD card does. While the file named by $STALL_FILE exists, every fsync/fdatasync of
 * the process waits (checking every 20 ms); when it is removed, the call goes through. The
 * watchdog test uses it to stick the buffer's writer thread in one write.
 *
 * Build: gcc -Wall -Wextra -O2 -shared -fPIC -o stall.so stall.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

typedef int (*sync_fn)(int);

static void wait_while_stalled(void) {
    const char *path = getenv("STALL_FILE");
    while (path != NULL && access(path, F_OK) == 0) {
        usleep(20000);
    }
}

int fsync(int fd) {
    static sync_fn real;
    if (real == NULL) {
        real = (sync_fn)dlsym(RTLD_NEXT, "fsync");
    }
    wait_while_stalled();
    return real(fd);
}

int fdatasync(int fd) {
    static sync_fn real;
    if (real == NULL) {
        real = (sync_fn)dlsym(RTLD_NEXT, "fdatasync");
    }
    wait_while_stalled();
    return real(fd);
}
