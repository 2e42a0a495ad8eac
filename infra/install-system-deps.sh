#!/usr/bin/env bash
# Install Debian packages the stack and the tests need, without starting their services.
# Usage: infra/install-system-deps.sh [PACKAGE ...]   (no argument: every package that is missing)
# A policy-rc.d that denies starts is in place during the install (unless one already is): the
# prometheus and postgresql packages would otherwise start services on 0.0.0.0:9090 and :5432.
set -u
packages=("$@")
if [ ${#packages[@]} -eq 0 ]; then
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
  command -v wrk >/dev/null 2>&1 || packages+=(wrk)
  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || packages+=(postgresql)
  command -v chromium >/dev/null 2>&1 || packages+=(chromium)
fi
[ ${#packages[@]} -gt 0 ] || exit 0
echo "system-deps: installing ${packages[*]}"
sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
policy=/usr/sbin/policy-rc.d; own_policy=
if [ ! -e $policy ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee $policy >/dev/null && $sudo chmod 755 $policy && own_policy=1
fi
$sudo apt-get update -qq && \
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
rc=$?
[ -z "$own_policy" ] || $sudo rm -f $policy
if [ $rc = 0 ] && [ -d /run/systemd/system ]; then
  for svc in prometheus postgresql; do $sudo systemctl disable --now $svc.service >/dev/null 2>&1 || true; done
fi
exit $rc
