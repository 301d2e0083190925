# fhir-bridge .rpm %postun: erase keeps the state in /var/lib/fhir-bridge (outbox,
# watermarks) and an edited config as bridges.toml.rpmsave; an upgrade restarts a
# running service.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    if [ "$1" -ge 1 ]; then
        systemctl try-restart fhir-bridge.service >/dev/null 2>&1 || true
    fi
fi
exit 0
