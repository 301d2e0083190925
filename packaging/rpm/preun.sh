# fhir-bridge .rpm %preun: on erase ($1 = 0), stop the service; an upgrade restarts it in %postun.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl stop fhir-bridge.service >/dev/null 2>&1 || true
fi
exit 0
