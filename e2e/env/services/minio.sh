#!/usr/bin/env bash
# MinIO (S3-compatible object storage) built from its Go module (github.com/minio/minio)
# into $TERN_CACHE/bin/minio. S3 API 127.0.0.1:19000, console 127.0.0.1:19001.
# Root credentials: MINIO_ROOT_USER / MINIO_ROOT_PASSWORD (defaults in lib.sh, exported by
# env.sh as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY). Creates bucket $TERN_S3_BUCKET.
set -euo pipefail
# shellcheck source=lib.sh disable=SC2034 # SVC_* are read by lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
svc_init minio
SVC_PORTS="$MINIO_PORT $MINIO_CONSOLE_PORT"
SVC_LOG="$LOG_DIR/minio.log"
MINIO_BUILD="$TERN_PKG/minio-$MINIO_VERSION"
export MINIO_ROOT_USER="${MINIO_ROOT_USER:-$MINIO_ROOT_USER_DEFAULT}"
export MINIO_ROOT_PASSWORD="${MINIO_ROOT_PASSWORD:-$MINIO_ROOT_PASSWORD_DEFAULT}"
BUCKET="${TERN_S3_BUCKET:-$TERN_S3_BUCKET_DEFAULT}"

do_install() {
	ensure_venv
	with_lock minio-install _install
}
_install() {
	go_env
	local key
	key="minio:$MINIO_VERSION $(go env GOVERSION)"
	stamp_ok "$MINIO_BUILD" "$key" && [[ -x "$TERN_BIN/minio" ]] && return 0
	local t0 ts commit
	t0="$(now_s)"
	log "building minio $MINIO_VERSION from github.com/minio/minio (first time: ~5-10 min on 2 cores, nice 10)"
	# pseudo-version v0.0.0-YYYYMMDDhhmmss-commit -> MinIO's own version stamp
	ts="$(echo "$MINIO_VERSION" | cut -d- -f2)"
	commit="$(echo "$MINIO_VERSION" | cut -d- -f3)"
	GO_LDFLAGS_EXTRA="-X github.com/minio/minio/cmd.Version=${ts:0:4}-${ts:4:2}-${ts:6:2}T${ts:8:2}:${ts:10:2}:${ts:12:2}Z -X github.com/minio/minio/cmd.CommitID=$commit -X github.com/minio/minio/cmd.ShortCommitID=$commit" \
		go_build_module "$MINIO_BUILD" "github.com/minio/minio@$MINIO_VERSION" "$TERN_BIN/minio" github.com/minio/minio
	stamp_set "$MINIO_BUILD" "$key"
	log "minio built in $(elapsed_since "$t0")s: $("$TERN_BIN/minio" --version | head -1)"
}

do_launch() {
	MINIO_UPDATE=off MINIO_BROWSER="${TERN_MINIO_CONSOLE:-on}" MINIO_PROMETHEUS_AUTH_TYPE=public \
		start_daemon "$SVC_LOG" "$TERN_BIN/minio" server \
		--address "127.0.0.1:$MINIO_PORT" \
		--console-address "127.0.0.1:$MINIO_CONSOLE_PORT" \
		--quiet \
		"$DATA_DIR"
}

s3() {
	py - "$@" <<'PY'
import os, sys
import boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{os.environ['MINIO_PORT']}",
                  aws_access_key_id=os.environ["MINIO_ROOT_USER"],
                  aws_secret_access_key=os.environ["MINIO_ROOT_PASSWORD"], region_name="us-east-1",
                  config=Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1}))
op, bucket = sys.argv[1], sys.argv[2]
names = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
if op == "ensure" and bucket not in names:
    s3.create_bucket(Bucket=bucket)
    print(f"created bucket {bucket}")
elif op == "check":
    assert bucket in names, f"bucket {bucket} missing"
PY
}

# Liveness endpoint plus a signed S3 request (ListBuckets).
do_health() {
	curl -fsS --max-time 3 -o /dev/null "http://127.0.0.1:$MINIO_PORT/minio/health/live" &&
		MINIO_PORT="$MINIO_PORT" s3 list "$BUCKET"
}

do_post_start() { MINIO_PORT="$MINIO_PORT" s3 ensure "$BUCKET" >&2; }

do_info() { echo "bucket $BUCKET $(MINIO_PORT="$MINIO_PORT" s3 check "$BUCKET" >/dev/null 2>&1 && echo present || echo MISSING)"; }

svc_main "$@"
