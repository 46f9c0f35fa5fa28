"""One repository per aggregate; services never write SQL themselves."""
