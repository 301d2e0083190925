# fhir-bridge .rpm %pre: the system user and group, before the files that name them.
# A group of that name left behind is the user's group (useradd --user-group
# refuses it); a user made beforehand with another primary group gets the group
# too (the unit's Group= and the config's owner need it). A failure here fails
# the install: without the user the daemon never starts.
set -e
if ! getent passwd fhir-bridge >/dev/null; then
    group=--user-group
    if getent group fhir-bridge >/dev/null; then group="--gid fhir-bridge"; fi
    # shellcheck disable=SC2086 # $group is two words or one on purpose
    useradd --system $group --home-dir /var/lib/fhir-bridge --no-create-home \
        --shell /usr/sbin/nologin --comment "fhir-bridge daemon" fhir-bridge
fi
if ! getent group fhir-bridge >/dev/null; then
    groupadd --system fhir-bridge
fi
exit 0
