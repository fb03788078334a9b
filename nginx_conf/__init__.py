"""The nginx side of binserve, shipped as package data: uwsgi_params, site templates, a systemd unit.

A package only so that an installed binserve (and binserve.testing) can read these files with
importlib.resources, as a checkout does from nginx_conf/.
"""
