#!/bin/sh
# The official redis image's entrypoint (docker-library/redis), plus `--protected-mode no`
# (the official binary is built with that default; Debian's is not).
set -e

# first arg is `-f` or `--some-option`, or `something.conf`: run redis-server with them
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi

# started as root: make the working dir (/data) the redis user's, then drop privileges
if [ "$1" = 'redis-server' ] && [ "$(id -u)" = '0' ]; then
	find . \! -user redis -exec chown redis '{}' +
	exec gosu redis "$0" "$@"
fi

if [ "$1" = 'redis-server' ]; then
	case " $* " in
	*" --protected-mode "*) ;;
	*)
		shift
		# a config file must stay the first argument
		if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
			conf="$1"
			shift
			set -- redis-server "$conf" --protected-mode no "$@"
		else
			set -- redis-server --protected-mode no "$@"
		fi
		;;
	esac
	# set an appropriate umask (if one isn't set already)
	um="$(umask)"
	if [ "$um" = '0022' ]; then
		umask 0077
	fi
fi

exec "$@"
