"""Development and test tooling: the launchers behind `make run`, `make test`, `make bench`, `make drills`,
`make manage` and `make cluster`, the local OpenBao and coturn they start, and nothing a clinic deploys.

    stack.py     the checkout's paths, development secrets, the stack's environment (what the others share)
    launcher.py  `python -m devstack run|test|bench|drills|manage`
    cluster.py   a production-shaped cluster on loopback (`python -m devstack.cluster up|scale`)
    vault.py     a real OpenBao dev server, set up like deploy/openbao/
    coturn.py    loopback coturn configurations derived from deploy/coturn/turnserver.conf, and starting them
    mail.py      a local SMTP server keeping the demo's mail in .data/mail/

Nothing at runtime imports this package (tests/test_layout.py checks it), and a production install
(`pip install .`) neither ships it nor installs its dependencies (the `devstack` extra, which make installs).
"""
