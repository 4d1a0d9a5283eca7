/* The pod sandbox's pause process: sleeps until SIGINT/SIGTERM, reaps orphaned children
 * (it is PID 1 of the pod's namespaces). Built static by services/node.sh. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void sigdown(int sig) {
	(void)sig;
	_exit(0);
}

static void sigreap(int sig) {
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

int main(int argc, char **argv) {
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("pause (tern e2e) 3.10.1");
		return 0;
	}
	if (getpid() != 1)
		fprintf(stderr, "warning: pause should be the first process\n");
	struct sigaction down = {.sa_handler = sigdown}, reap = {.sa_handler = sigreap, .sa_flags = SA_NOCLDSTOP};
	sigaction(SIGINT, &down, NULL);
	sigaction(SIGTERM, &down, NULL);
	sigaction(SIGCHLD, &reap, NULL);
	for (;;)
		pause();
	return 42;
}
